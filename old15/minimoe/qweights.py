"""Quantized weight formats: a matrix as fewer bytes plus scales, and the way back (every kernel's oracle).

A decode step streams weights, so a weight stored in fewer bytes lowers the floor of the step by the
same factor (wave2-peers.md §1.2: Mixtral bs1 5.3 ms in bf16, 2.7 ms in 8 bits, 1.4 ms in 4 bits).
Each format below maps a matrix W [N, K] (N output rows, K the reduction, nn.Linear's layout) to
codes plus fp32 scales:

    fp8   e4m3 codes, one scale per output row            W ≈ q · s[n]                  8 + 32/K bits
          (a pre-quantized checkpoint: one per 128x128 block, W ≈ q · s[n//128, k//128], DeepSeek-V3)
    int8  8-bit codes u, one scale per output row         W ≈ (u − 128) · s[n]           8 + 32/K bits
    int4  4-bit codes u, one scale per 128 inputs         W ≈ (u − 8) · s[n, k//128]     4.25 bits
          (s = amax·c/7, c from a 5-point clip search: the least squared error per group)
          (optional zero points, as GPTQ/AWQ store them:  W ≈ (u − z[n, g]) · s[n, g])
Scales are absmax: s = max|W| / qmax over the row (group, block), codes round to nearest, so an
integer code is off by at most s/2 (s with a zero point; int4's clipped weights by up to 1.75 s) and an
fp8 code by 2^-4 of its value (e4m3 keeps 3 mantissa bits). An all-zero row gets scale 1.

Integer codes are unsigned and packed into int32 words along K, 32/bits codes a word, code PW·j + i
in bits [bits·i, bits·(i+1)) of word j (GPTQ's order along K, but rows stay [N, K/PW] so the
reduction axis is contiguous, as in every minimoe weight). One 16-byte load brings 32 int4 codes,
and a kernel turns a field into a float with an OR and a subtract (the 2^23 trick in
kernels/quant_tiles.py) rather than a slow integer->float conversion.

A K that is not a multiple of the group (or of the codes per word) is padded with zero weights up to
Kp; `K` remembers the real width. The kernels mask the activation past K, so pads never count.

`QuantMatrix` holds E stacked matrices (an expert layer's w13 or w2; a dense layer is QuantWeight,
E = 1 without the leading dim) as nn.Parameters (requires_grad False), so `model.parameters()` counts
the real bytes. Activations for fp8 GEMMs on tensor cores are quantized per token on the fly
(`quant_rows_fp8`, the reference of kernels/quant_tiles.quant_rows_fp8).
References: DeepSeek-V3 inference/kernel.py (block fp8), GPTQ (arXiv 2210.17323, packing and
groups), gpt-fast quantize.py (per-channel int8 by module swap).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
FP8_MAX = 448.0                # largest finite e4m3 value
FP8_BLOCK = 128                # DeepSeek-V3's and the Hub's weight_block_size
INT4_GROUP = 128
INT4_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8)   # scale candidates of int4 (fractions of the group's amax / 7)
ZERO_POINT = {8: 128, 4: 8}    # the constant zero of the symmetric integer formats
GEMV_MAX_T = 4                 # dense layers: up to this many rows run the GEMV kernel, more a GEMM
# ... up to this many (by bits; 0 = fp8) the skinny split-K GEMM (kernels/skinny_gemm.py); the activations of both
# stay as they are; past it fp8 quantizes them per token (W8A8 _scaled_mm), the integer formats dequantize into
# cuBLAS. fp8 stops at 32 rows: at 64, _scaled_mm won on the wide q/k/v shapes (OLMoE 12.1 vs 17.2 µs with the
# default tiles; H200, scripts/bench_skinny.py, thirteenth session, call 5) and the OLMoE bs-64 step was 3.3% slower
# through the skinny GEMM (call 4).
WEIGHT_ONLY_MAX_T = {0: 32, 4: 64, 8: 64}
SKINNY_QUANT = True            # False: rows past GEMV_MAX_T go to _scaled_mm / dequantize + cuBLAS, as before the
                               # thirteenth session (scripts/step_probe.py A/B's it)


class QuantMatrix(nn.Module):
    """E quantized matrices [E, N, K] as the kernels read them (see the module docstring).

    qdata  [E, N, K] float8_e4m3fn (bits 0), or [E, N, Kp/PW] int32 words of `bits`-bit codes
    scale  [E, ceil(N / row_block), NG] fp32, NG = 1 (group 0: one scale a row) or ceil(Kp / group)
    zero   [E, N, NG] fp32 zero points, or None (then the format's constant: 128, 8, or 0 for fp8)"""

    def __init__(self, qdata, scale, zero, K: int, bits: int, group: int, row_block: int = 1):
        super().__init__()
        self.qdata = nn.Parameter(qdata, requires_grad=False)
        self.scale = nn.Parameter(scale, requires_grad=False)
        self.register_parameter("zero", None if zero is None else nn.Parameter(zero, requires_grad=False))
        self.K, self.bits, self.group, self.row_block = K, bits, group, row_block
        self.codes = 0                             # qbnb.py: bitsandbytes' own code layouts (kernels/quant_tiles)
        self.compute_dtype = torch.float32         # what dequantize() gives by default (quant.py sets the model's)
        self.register_buffer("codebook", None)     # nf4's 16 values (codes 1)

    # ---- what the kernels read (always with the leading E dim) ----------------------------------------
    @property
    def data3(self) -> torch.Tensor:
        return self.qdata if self.qdata.dim() == 3 else self.qdata[None]

    @property
    def scale3(self) -> torch.Tensor:
        return self.scale if self.scale.dim() == 3 else self.scale[None]

    @property
    def zero3(self) -> torch.Tensor | None:
        if self.zero is None:
            return None
        return self.zero if self.zero.dim() == 3 else self.zero[None]

    @property
    def zero_point(self) -> int:
        return 0 if self.bits == 0 or self.zero is not None else ZERO_POINT[self.bits]

    @property
    def stack_shape(self) -> tuple[int, int, int]:
        """(E, N, K): the shape of the dense stack this stands for."""
        return self.data3.shape[0], self.data3.shape[1], self.K

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def describe(self) -> str:
        if self.bits == 0:
            return "fp8 e4m3 " + ("per row" if self.group == 0 else f"{self.row_block}x{self.group} blocks")
        per = "per row" if self.group == 0 else f"groups of {self.group}"
        return f"int{self.bits} {per}" + (" with zero points" if self.zero is not None else "")

    # ---- the way back ------------------------------------------------------------------------------
    def dequantize(self, dtype: torch.dtype | None = None, experts=None) -> torch.Tensor:
        """Dense [E', N, K] in `dtype` (default compute_dtype; experts: an int or slice of E to decode only those)."""
        dtype = dtype or self.compute_dtype
        sel = slice(None) if experts is None else (slice(experts, experts + 1) if isinstance(experts, int)
                                                   else experts)
        q, s = self.data3[sel], self.scale3[sel]
        N = q.shape[1]
        codes = q.float() if self.bits == 0 else unpack_words(q, self.bits).float()       # [E', N, Kp]
        if self.zero is not None:
            codes = codes - _per_column(self.zero3[sel], self.group, codes.shape[2])
        elif self.bits:
            codes = codes - ZERO_POINT[self.bits]
        s = s.repeat_interleave(self.row_block, dim=1)[:, :N] if self.row_block > 1 else s
        w = codes * _per_column(s, self.group, codes.shape[2])
        return w[:, :, :self.K].to(dtype)


class QuantWeight(QuantMatrix):
    """A dense layer's quantized weight [N, K] behind `linear.linear()`: `.linear(x, bias)` runs its own
    kernel, `.dequantize()` gives the dense [N, K] (MLA's absorbed decode reads wkv_b that way)."""
    use_kernels = False    # quant.quantize_ sets it per model: Triton on a GPU, the PyTorch path otherwise

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.qdata.shape[0], self.K))

    def dequantize(self, dtype: torch.dtype | None = None, experts=None) -> torch.Tensor:
        return super().dequantize(dtype)[0]

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
        """x [..., K] -> [..., N] in x.dtype. Up to GEMV_MAX_T rows: the GEMV kernel; up to WEIGHT_ONLY_MAX_T[bits]
        (fp8 32, int8 / int4 64): the skinny split-K GEMM (kernels/skinny_gemm.py, a bias of x's dtype in its
        epilogue); both keep the activations in x.dtype (pdl: launched with Programmatic Dependent Launch,
        kernels/pdl.py). More rows: fp8 per-row weights through torch._scaled_mm (sm89+, activations quantized per
        token, W8A8), anything else dequantized into a cuBLAS GEMM."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        T = x2.shape[0]
        if self.use_kernels and 0 < T <= GEMV_MAX_T:
            from .kernels.fused_moe_quant_small import quant_gemv
            y = quant_gemv(x2.contiguous(), self, pdl=pdl)
        elif self.use_kernels and T <= WEIGHT_ONLY_MAX_T[self.bits] and _skinny_ok(self, x2):
            from .kernels.skinny_gemm import skinny_gemm_quant
            fused = bias is not None and bias.dtype == x2.dtype           # else added below, with torch's promotion
            y = skinny_gemm_quant(x2.contiguous(), self, bias if fused else None, pdl=pdl)
            bias = None if fused else bias
        elif self.use_kernels and _scaled_mm_ok(self, x2):
            y = _fp8_scaled_mm(x2, self)
        else:
            y = self.reference_linear(x2)
        y = y if bias is None else y + bias
        return y.view(*lead, -1)

    def reference_linear(self, x2: torch.Tensor) -> torch.Tensor:
        """The PyTorch path with the kernels' numerics: fp8 GEMMs past WEIGHT_ONLY_MAX_T[0] rows (GEMV_MAX_T with
        SKINNY_QUANT off) see the activation quantized per token (per 128-group for block scales); everything else
        sees it as is."""
        if self.bits == 0 and x2.shape[0] > (WEIGHT_ONLY_MAX_T[0] if SKINNY_QUANT else GEMV_MAX_T):
            q, s = quant_rows_fp8(x2, self.group)
            x2 = (q.float() * _per_column(s[None], self.group, q.shape[1])[0]).to(x2.dtype)
        return F.linear(x2, self.dequantize(x2.dtype))


def _skinny_ok(w: QuantWeight, x2: torch.Tensor) -> bool:
    from .kernels.skinny_gemm import quant_usable
    return SKINNY_QUANT and quant_usable(x2.shape[0], w, x2.dtype)


def _scaled_mm_ok(w: QuantWeight, x2: torch.Tensor) -> bool:
    return (w.bits == 0 and w.group == 0 and x2.is_cuda and torch.cuda.get_device_capability(x2.device) >= (8, 9)
            and w.K % 16 == 0 and w.qdata.shape[0] % 16 == 0 and os.environ.get("MINIMOE_NO_SCALED_MM") != "1")


def _fp8_scaled_mm(x2: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """W8A8 on fp8 tensor cores: row-wise scales on both sides, fp32 accumulation (cuBLASLt/CUTLASS)."""
    from .kernels.quant_tiles import quant_rows_fp8 as quant_rows_kernel
    q, s = quant_rows_kernel(x2.contiguous(), 0)                                         # [T, K], [T, 1]
    return torch._scaled_mm(q, w.qdata.t(), scale_a=s, scale_b=w.scale.view(1, -1), out_dtype=x2.dtype)


# ---- quantizers ------------------------------------------------------------------------------------

def _stack(w: torch.Tensor) -> torch.Tensor:
    return (w if w.dim() == 3 else w[None]).float()


def _unstack(t: torch.Tensor | None, dense: bool):
    return t[0] if (dense and t is not None) else t


def _scale_of(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    s = amax / qmax
    return torch.where(s > 0, s, torch.ones_like(s))


def _per_column(t: torch.Tensor, group: int, width: int) -> torch.Tensor:
    """[E, R, NG] per-group values spread over `width` columns (group 0: one value a row)."""
    return t if group == 0 else t.repeat_interleave(group, dim=2)[:, :, :width]


def _pad_k(w: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -w.shape[-1] % multiple
    return F.pad(w, (0, pad)) if pad else w


def quantize_fp8(w: torch.Tensor, block: int = 0, cls=QuantMatrix) -> QuantMatrix:
    """w [E, N, K] or [N, K] -> fp8 e4m3 codes; one scale a row (block 0) or a block x block tile."""
    dense, w3 = w.dim() == 2, _stack(w)
    E, N, K = w3.shape
    if block:
        wp = F.pad(w3, (0, -K % block, 0, -N % block))
        tiles = wp.view(E, wp.shape[1] // block, block, wp.shape[2] // block, block)
        s = _scale_of(tiles.abs().amax(dim=(2, 4)), FP8_MAX)                          # [E, N/b, K/b]
        full = s.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :N, :K]
    else:
        s = _scale_of(w3.abs().amax(dim=2, keepdim=True), FP8_MAX)                     # [E, N, 1]
        full = s
    q = (w3 / full).clamp(-FP8_MAX, FP8_MAX).to(E4M3)
    return cls(_unstack(q, dense), _unstack(s, dense), None, K, 0, block, block or 1)


def quantize_int8(w: torch.Tensor, cls=QuantMatrix) -> QuantMatrix:
    """w [E, N, K] or [N, K] -> 8-bit codes, one scale a row."""
    dense, w3 = w.dim() == 2, _stack(w)
    K = w3.shape[2]
    s = _scale_of(w3.abs().amax(dim=2, keepdim=True), 127.0)                            # [E, N, 1]
    u = (torch.round(w3 / s).clamp(-127, 127) + 128).to(torch.int32)
    words = pack_words(_pad_k(u, 4), 8)
    return cls(_unstack(words, dense), _unstack(s, dense), None, K, 8, 0)


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP, zero_point: bool = False, cls=QuantMatrix) -> QuantMatrix:
    """w [E, N, K] or [N, K] -> 4-bit codes, a scale (and a zero point if asked) per `group` inputs.
    K is padded with zeros to a multiple of `group` (a multiple of 8)."""
    if group % 8 or group & (group - 1):
        raise ValueError(f"int4 group size must be a power of two >= 8, got {group}")
    dense, w3 = w.dim() == 2, _stack(w)
    E, N, K = w3.shape
    g = _pad_k(w3, group).view(E, N, -1, group)                                         # [E, N, NG, G]
    if zero_point:
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        s = _scale_of(hi - lo, 15.0)                                                    # [E, N, NG]
        z = torch.round(-lo / s).clamp(0, 15)
        u = (torch.round(g / s[..., None]) + z[..., None]).clamp(0, 15)
    else:
        s, z = _clipped_scale(g), None
        u = torch.round(g / s[..., None]).clamp(-8, 7) + 8
    words = pack_words(u.view(E, N, -1).to(torch.int32), 4)
    return cls(_unstack(words, dense), _unstack(s, dense), _unstack(z, dense), K, 4, group)


def _clipped_scale(g: torch.Tensor) -> torch.Tensor:
    """Per group [..., G] the symmetric int4 scale amax·c/7, c in INT4_CLIPS, with the least squared error:
    clipping the rare largest weight a little buys a finer step for all the others (the search llama.cpp's
    and AWQ's round-to-nearest do; on the trained Mixtral's experts: 24% less squared error than c = 1)."""
    amax = g.abs().amax(-1)
    if g.is_meta:
        return amax
    best, best_err = None, None
    for c in INT4_CLIPS:
        s = _scale_of(amax * c, 7.0)
        err = ((torch.round(g / s[..., None]).clamp(-8, 7) * s[..., None] - g) ** 2).sum(-1)
        better = err < best_err if best_err is not None else torch.ones_like(err, dtype=torch.bool)
        best = s if best is None else torch.where(better, s, best)
        best_err = err if best_err is None else torch.where(better, err, best_err)
    return best


def pack_words(u: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., Kp] unsigned codes (< 2**bits) -> [..., Kp / (32 // bits)] int32, low bits first."""
    per = 32 // bits
    shifts = torch.arange(per, device=u.device, dtype=torch.int64) * bits
    v = (u.reshape(*u.shape[:-1], -1, per).to(torch.int64) << shifts).sum(-1)
    return torch.where(v >= 2 ** 31, v - 2 ** 32, v).to(torch.int32)


def unpack_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of pack_words: [..., W] int32 -> [..., W * 32 // bits] int32 codes."""
    per = 32 // bits
    shifts = torch.arange(per, device=words.device, dtype=torch.int32) * bits
    u = (words[..., None] >> shifts) & ((1 << bits) - 1)
    return u.reshape(*words.shape[:-1], -1)


def quant_rows_fp8(x: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quantization: x [R, K] -> (e4m3 [R, K], fp32 scales [R, NG]), one scale a
    row (group 0) or a group of `group` columns, s = max(amax, 1e-12) / 448."""
    R, K = x.shape
    xf = x.float()
    if group:
        amax = F.pad(xf, (0, -K % group)).view(R, -1, group).abs().amax(-1)           # [R, NG]
    else:
        amax = xf.abs().amax(-1, keepdim=True)                                          # [R, 1]
    s = amax.clamp(min=1e-12) / FP8_MAX
    full = s if not group else s.repeat_interleave(group, 1)[:, :K]
    return (xf / full).clamp(-FP8_MAX, FP8_MAX).to(E4M3), s
