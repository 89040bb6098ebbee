"""Pre-quantized int4 checkpoints: GPTQ and AWQ (W4A16, a scale and a zero point per 128 inputs), read into
minimoe's int4 layout once, at load, and run in the same int4 kernels as `--quant int4`.

The Hub's layouts, for one quantized linear B whose weight is W [N, K] (nn.Linear's layout; G = 128):

    GPTQ (AutoGPTQ / GPTQModel; quant_method "gptq", arXiv 2210.17323)
      B.qweight  int32 [K/8, N]    packed along K: W[n, 8j+i]'s code in bits 4i..4i+3 of qweight[j, n]
      B.qzeros   int32 [K/G, N/8]  packed along N: the zero of (group g, row 8c+i) in bits 4i of qzeros[g, c];
                                   checkpoint_format "gptq" (v1, the default) stores zero - 1, "gptq_v2" the zero
      B.scales   fp16  [K/G, N]
      B.g_idx    int32 [K]         each input's group: must be k // G (checked at load; act-order without
                                   static_groups, whose groups are scattered along K, is refused up front)
    AWQ (AutoAWQ's GEMM layout; quant_method "awq", version "gemm", arXiv 2306.00978)
      B.qweight  int32 [K, N/8]    packed along N, a word's 8 codes in AWQ's order: bits 4i hold column
                                   8c + AWQ_ORDER[i], AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
      B.qzeros   int32 [K/G, N/8]  the same packing
      B.scales   fp16  [K/G, N]
    both:  W[n, k] = (q[n, k] - z[n, k // G]) · s[n, k // G]

minimoe's int4 (qweights.py) keeps the reduction axis contiguous: codes int32 [N, K/8] packed along K in
GPTQ's bit order, scale fp32 [N, K/G], zero fp32 [N, K/G] (dropped after loading when every zero is 8, the
symmetric constant: GPTQ's sym=True). So GPTQ's qweight is a transpose and AWQ's an unpack + repack.
`Int4View` shows the loader each quantized linear B as three tensors already in minimoe's layout,
    B.weight (codes [N, K/8])   B.weight_scale ([N, K/G])   B.weight_zero ([N, K/G]),
so the loader's recipes (concatenating q/k/v and gate/up on rows, stacking experts) apply unchanged; the
raw tensors are hidden, and `logical_shape` gives B.weight's unpacked [N, K] (an expert's width).

Under a parallel plan each rank reads its experts and its pieces of the three tensors (prequant.swap_ gives
the codes, scales and zero points the cut of the dense parameter; a K cut must fall on a group boundary).
Refused with one sentence (`unsupported`): bits other than 4, a group size other than 128 (minimoe's int4
group, whose bytes the roofline counts), act-order GPTQ (desc_act: groups not contiguous along K), AWQ's
GEMV / Marlin layouts (version other than "gemm") and AWQ without zero points.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config_fields import CheckpointError
from .qweights import INT4_GROUP, QuantMatrix, pack_words, unpack_words

METHODS = ("gptq", "awq")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)     # AWQ word slot i holds column 8c + AWQ_ORDER[i]
SUFFIXES = ("_scale", "_zero")          # B.weight + suffix: the view's scale and zero tensors
_RAW = (".qweight", ".qzeros", ".scales", ".g_idx")


@dataclass(frozen=True)
class Scheme:
    method: str          # "gptq" | "awq"
    zero_offset: int     # added to a stored zero point: 1 for GPTQ's v1 format, else 0

    @property
    def what(self) -> str:
        return f"{self.method} int4, group size {INT4_GROUP}"


def unsupported(qc: dict) -> str | None:
    """None when a GPTQ / AWQ quantization_config maps onto minimoe's int4, else the sentence why not."""
    method = qc.get("quant_method")
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size"))
    head = f"{method} checkpoint"
    if bits != 4:
        return f"{head} with bits {bits!r}: minimoe imports 4-bit GPTQ / AWQ only (its int4 format)"
    if group != INT4_GROUP:
        return (f"{head} with group_size {group!r}: minimoe imports group size {INT4_GROUP} only (its int4 group, "
                "whose bytes the roofline counts)")
    if method == "gptq":
        if qc.get("desc_act") and not qc.get("static_groups"):
            return (f"{head} with desc_act (act-order) and no static_groups: its groups are not contiguous along "
                    "the input, which minimoe's int4 kernels need; use a checkpoint quantized with desc_act false")
        if _gptq_format(qc) not in ("gptq", "gptq_v2"):
            return f"{head} with checkpoint_format {_gptq_format(qc)!r}: minimoe reads gptq and gptq_v2"
        return None
    if str(qc.get("version", "gemm")).lower() != "gemm":
        return (f"{head} with version {qc.get('version')!r}: minimoe reads AWQ's GEMM layout only (GEMV, Marlin "
                "and ExLlama layouts pack the codes differently)")
    if not qc.get("zero_point", True):
        return f"{head} without zero points: minimoe reads AWQ's default (zero_point true)"
    return None


def _gptq_format(qc: dict) -> str:
    """GPTQ's zero-point convention: `checkpoint_format` (transformers / optimum), `format` (some GPTQModel
    versions), absent or null = "gptq" (v1, zero - 1 stored)."""
    return qc.get("checkpoint_format") or qc.get("format") or "gptq"


def scheme(qc: dict) -> Scheme:
    """The Scheme of a quantization_config that `unsupported` accepted."""
    v1 = qc["quant_method"] == "gptq" and _gptq_format(qc) == "gptq"
    return Scheme(qc["quant_method"], 1 if v1 else 0)


def _awq_natural(words: torch.Tensor) -> torch.Tensor:
    """[R, N/8] int32 words in AWQ's order -> [R, N] int32 codes in column order."""
    u = unpack_words(words, 4).view(words.shape[0], -1, 8)                          # [R, N/8, 8], slot order
    out = torch.empty_like(u)
    out[..., list(AWQ_ORDER)] = u                                                   # slot i -> column AWQ_ORDER[i]
    return out.view(words.shape[0], -1)


class Int4View:
    """A Checkpoint seen in minimoe's int4 layout (see the module docstring): `where`, `shape`, `get` as
    Checkpoint's, plus `logical_shape`. Conversions run per tensor when the loader reads it."""

    def __init__(self, ckpt, s: Scheme):
        self.ckpt, self.scheme, self.device = ckpt, s, getattr(ckpt, "device", "cpu")
        self.bases = {n[:-len(".qweight")] for n in ckpt.where if n.endswith(".qweight")}
        raw = {b + r for b in self.bases for r in _RAW}
        self.where = {n: f for n, f in ckpt.where.items() if n not in raw}
        for b in self.bases:
            for missing in (r for r in (".qzeros", ".scales") if b + r not in ckpt.where):
                raise CheckpointError(f"{b}.qweight has no {b}{missing} beside it ({s.method} stores both)")
            for v in ("", *SUFFIXES):
                self.where[f"{b}.weight{v}"] = ckpt.where[b + ".qweight"]

    def _split(self, name: str):
        for v in SUFFIXES:
            if name.endswith(".weight" + v) and name[:-len(".weight" + v)] in self.bases:
                return name[:-len(".weight" + v)], v
        if name.endswith(".weight") and name[:-len(".weight")] in self.bases:
            return name[:-len(".weight")], ""
        return None, None

    def ignorable(self, name: str) -> bool:
        """An all-zero `B.bias` beside a quantized B that minimoe's module does not have: older AutoGPTQ exports
        write one for every quantized linear (the loader skips it instead of calling it unexpected)."""
        if not name.endswith(".bias") or name[:-len(".bias")] not in self.bases:
            return False
        return not bool(self.ckpt.get(name).any())

    def logical_shape(self, name: str) -> list[int]:
        """B.weight's unpacked shape [N, K]; any other tensor's shape."""
        base, v = self._split(name)
        if base is None or v:
            return self.shape(name)
        N, KW = self.shape(name)
        return [N, KW * 8]

    def shape(self, name: str) -> list[int]:
        base, v = self._split(name)
        if base is None:
            return self.ckpt.shape(name)
        q, sc = self.ckpt.shape(base + ".qweight"), self.ckpt.shape(base + ".scales")
        if v:                                                       # scales [K/G, N] -> [N, K/G]
            return [sc[1], sc[0]]
        if self.scheme.method == "gptq":                            # [K/8, N] -> [N, K/8]
            return [q[1], q[0]]
        return [q[1] * 8, q[0] // 8]                                # awq: [K, N/8] -> [N, K/8]

    def get(self, name: str, index: tuple = ()) -> torch.Tensor:
        """The tensor (in minimoe's layout), or only `index` (slices of that layout, as the loader's placement
        asks): the raw tensors are then read only in the matching rows / columns (safetensors slices) where the
        cut falls on whole 8-code words, else read whole and sliced after the conversion."""
        base, v = self._split(name)
        if base is None:
            return self.ckpt.get(name, index)
        if index:
            N, W = self.shape(name)
            (r0, r1), (c0, c1) = (_bounds(sl, n) for sl, n in zip(index, (N, W)))
            if r0 % 8 == 0 and r1 % 8 == 0:
                return self._convert(base, v, (r0, r1), (c0, c1))
            return self._convert(base, v, (0, N), (0, W))[index]
        N, W = self.shape(name)
        return self._convert(base, v, (0, N), (0, W))

    def _read(self, name: str, index: tuple, int32: bool = True) -> torch.Tensor:
        t = self.ckpt.get(name, tuple(slice(a, b) for a, b in index))
        if int32 and t.dtype != torch.int32:
            raise CheckpointError(f"{name} is {t.dtype}; {self.scheme.method} packs 4-bit codes into int32 words")
        if not int32 and not t.dtype.is_floating_point:
            raise CheckpointError(f"{name} is {t.dtype}; {self.scheme.method} stores float scales")
        return t

    def _convert(self, base: str, v: str, rows: tuple, cols: tuple) -> torch.Tensor:
        """Rows [r0, r1) of N and columns [c0, c1) of minimoe's layout (K/8 words, or K/G groups for the
        scale and zero), read from the raw tensors' matching pieces (r0, r1 multiples of 8)."""
        (r0, r1), (c0, c1) = rows, cols
        if v == "_scale":                                                       # raw [K/G, N]
            return self._read(base + ".scales", ((c0, c1), (r0, r1)), int32=False).float().t().contiguous()
        if v == "_zero":                                                        # raw [K/G, N/8]
            words = self._read(base + ".qzeros", ((c0, c1), (r0 // 8, r1 // 8)))
            z = unpack_words(words, 4) if self.scheme.method == "gptq" else _awq_natural(words)
            return (z + self.scheme.zero_offset).float().t().contiguous()      # [N', K'/G] fp32
        if self.scheme.method == "gptq":                                        # raw [K/8, N]
            if base + ".g_idx" in self.ckpt.where:                  # contiguous groups: k // G, nothing else
                g = self.ckpt.get(base + ".g_idx", (slice(8 * c0, 8 * c1),))
                if not torch.equal(g.long(), torch.arange(8 * c0, 8 * c1, device=g.device) // INT4_GROUP):
                    raise CheckpointError(f"{base}.g_idx is not k // {INT4_GROUP}: this layer's groups are not "
                                          "contiguous along the input (act-order), which minimoe's int4 cannot run")
            return self._read(base + ".qweight", ((c0, c1), (r0, r1))).t().contiguous()      # [N', K'/8]
        q = self._read(base + ".qweight", ((8 * c0, 8 * c1), (r0 // 8, r1 // 8)))          # awq: raw [K, N/8]
        return pack_words(_awq_natural(q).t().contiguous(), 4)                             # [N', K'/8]


def _bounds(sl: slice, n: int) -> tuple[int, int]:
    start, stop, step = sl.indices(n)
    if step != 1:
        raise ValueError(f"a placement slice has step {step}")
    return start, stop


def meta_matrix(cls, lead: tuple, N: int, K: int, name: str) -> QuantMatrix:
    """An int4 QuantMatrix (or QuantWeight) on the meta device for [*lead, N, K] with zero points.
    Raises CheckpointError when K is not a multiple of the group size (name says which tensor)."""
    if K % INT4_GROUP:
        raise CheckpointError(f"{name.removesuffix('.weight')}.qweight: {K} inputs (this rank's piece under --tp) is "
                              f"not a multiple of the int4 group size {INT4_GROUP}: a cut may not split a group; "
                              "use fewer --tp ranks, or --ep")
    NG = K // INT4_GROUP
    return cls(torch.empty(*lead, N, K // 8, dtype=torch.int32, device="meta"),
               torch.empty(*lead, N, NG, dtype=torch.float32, device="meta"),
               torch.empty(*lead, N, NG, dtype=torch.float32, device="meta"), K, 4, INT4_GROUP)


def finalize_(model: torch.nn.Module, settings) -> bool:
    """After the copy: drop the zero points of matrices whose every zero is 8 (the symmetric constant, so
    the kernels take the cheaper path and the bytes match `--quant int4`), and let dense layers use the
    kernels on a GPU. Returns whether any matrix kept its zero points."""
    kept = False
    for m in model.modules():
        if not isinstance(m, QuantMatrix) or m.bits != 4:
            continue
        if hasattr(m, "use_kernels"):
            m.use_kernels, m.compute_dtype = str(settings.device).startswith("cuda"), settings.torch_dtype
        if m.zero is not None and bool((m.zero == 8).all()):
            m.zero = None
        kept = kept or m.zero is not None
    return kept
