"""One seam for every dense projection: `linear(x, weight, bias)`, dispatched on the weight's type.

A plain tensor weight [out, in] runs `F.linear` (cuBLAS), or, when the run asks for it at decode
sizes, the Triton GEMV of kernels/gemv.py. Any other weight is a packed format (fp8 with scales,
int8, int4 with group scales, a bitsandbytes tensor ...): an object that knows its own kernel and
exposes `weight.linear(x, bias)`. quant.py swaps a `Linear`'s plain weight for such an object after
the model is built, so the model code never changes when the format does. The design follows
DeepSeek-V3's inference code, whose `linear()` picks the GEMM by the weight's dtype.

`Linear` replaces `nn.Linear` in the model: same parameter names (`weight`, `bias`), same
[out, in] layout, but its forward goes through the seam, and it is the module that parallel
plans and quantization wrap or hook.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from .kernels import gemv as _gemv
    from .kernels.dense_gemv import dense_gemv as _dense_gemv
    from .kernels import skinny_gemm as _skinny
    from .kernels import tall_gemm as _tall
except ImportError:       # no Triton here: --gemv triton / stream / skinny are refused before a model is built
    _gemv = _dense_gemv = _skinny = _tall = None

GEMV_KERNELS = ("torch", "triton", "stream", "skinny")
STREAM_MAX_T = 2          # the stream kernel reads the weight once per token: decode at batch 1-2 only
SKINNY_AUTO = False       # True: `--gemv auto` sends dense layers at 3..64 tokens to kernels/skinny_gemm.py (measured
                          # slower than cuBLAS there, so off; routers: router_logits)
# A probe knob (scripts/step_probe.py): None, or the BLAS library PyTorch should prefer ("cublas" / "cublaslt", a
# process-wide torch setting) when F.linear runs here, set at each such call, so a graph captured with it keeps that
# library's kernels. Off (None): PyTorch's own choice. Measured (H200, docs/results/2026-12-04-s39, call 2): cuBLASLt
# chose the same kernels at bs 16-64 (steps within ±0.23%); kept only so that call can be re-run.
BLAS_LIBRARY: str | None = None


def auto_gemv(T: int, N: int, D: int) -> str:
    """`--gemv auto`: the kernel for x [T, D] @ W[N, D]ᵀ, as measured on the H200 (scripts/bench_gemv.py,
    16 projection shapes from 1024 x 2048 to Mixtral's 32000 x 4096 head; docs/results/2026-11-30-s5):
    at T = 1 the stream kernel beat cuBLAS on 15 of 16 shapes (tie on the 16th): Qwen3-0.6B's o 13.2 ->
    4.1 µs, w2 6.9 -> 4.6, Qwen3-30B-A3B's o 9.0 -> 7.4, Mixtral's o 13.0 -> 11.1, OLMoE's head 54.4 ->
    49.4. At T = 2 it still wins on N = 1024 outputs (0.6B's o 13.4 -> 4.6, w2 6.9 -> 5.6); from there on
    each token re-reads the weight and cuBLAS (or tl.dot tiles, within 5% of it) wins."""
    if T == 1 or (T == 2 and N <= 1024):
        return "stream"
    if SKINNY_AUTO and 3 <= T <= 64:
        return "skinny"
    return "torch"


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None, gemv: str = "torch",
           pdl: bool = False, float_out: bool = False) -> torch.Tensor:
    """y = x @ weightᵀ + bias for x [..., in] -> [..., out], whatever the weight's format.
    gemv (RunSettings.gemv) for a plain weight at decode sizes: "torch" (F.linear, cuBLAS), "triton"
    (kernels/gemv.py, up to its MAX_T rows), "stream" (kernels/dense_gemv.py, the MoE decode down kernel as a
    dense GEMV, up to STREAM_MAX_T rows, a bias added in its fp32 epilogue), "skinny" (kernels/skinny_gemm.py,
    1-64 rows, split over K) or "auto" (`auto_gemv` per shape);
    anything outside those sizes runs F.linear. pdl (RunSettings.pdl on, sm90+): the stream kernel is launched
    with Programmatic Dependent Launch (kernels/pdl.py). float_out: float32 y with the bits of y.float() (an LM
    head's logits); the stream kernel stores them itself, one copy launch fewer a decode step."""
    if float_out:
        if (gemv != "torch" and isinstance(weight, torch.Tensor) and x.dtype == weight.dtype
                and (auto_gemv(x.shape[:-1].numel(), *weight.shape) if gemv == "auto" else gemv) == "stream"
                and 1 <= x.shape[:-1].numel() <= STREAM_MAX_T and weight.is_contiguous()
                and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))):
            return _dense_gemv(x.reshape(-1, x.shape[-1]).contiguous(), weight, pdl=pdl, bias=bias,
                               out_dtype=torch.float32).view(*x.shape[:-1], -1)
        return linear(x, weight, bias, gemv, pdl).float()
    if not isinstance(weight, torch.Tensor):          # a packed weight: its own kernel
        return weight.linear(x, bias, pdl=pdl)
    if gemv != "torch" and x.dtype == weight.dtype:
        lead = x.shape[:-1]
        T = lead.numel()
        kind = auto_gemv(T, *weight.shape) if gemv == "auto" else gemv
        if kind == "triton" and _gemv.usable(T, weight):
            y, _ = _gemv.gemv(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias)
            return y.view(*lead, -1)
        if kind == "skinny" and _skinny.usable(T, weight, x.dtype):
            y = _skinny.skinny_gemm(x.reshape(-1, x.shape[-1]).contiguous(), weight, bias, pdl=pdl)
            return y.view(*lead, -1)
        if kind == "stream" and 1 <= T <= STREAM_MAX_T and weight.is_contiguous() and (
                bias is None or (bias.dtype == x.dtype and bias.is_contiguous())):
            return _dense_gemv(x.reshape(-1, x.shape[-1]).contiguous(), weight, pdl=pdl, bias=bias).view(*lead, -1)
    if BLAS_LIBRARY is not None:
        torch.backends.cuda.preferred_blas_library(BLAS_LIBRARY)
    return F.linear(x, weight, bias)


# Router gates (up to ROUTER_MAX_E x ROUTER_MAX_D) at 1..64 tokens through kernels/skinny_gemm.py under `--gemv auto`,
# with these tiles: the best of its sweep on the H200 at every T (scripts/bench_skinny.py, thirteenth session, µs per
# call against cuBLAS, a bf16 -> fp32 cast included for DeepSeek's fp32 gate): OLMoE 64 x 2048 T = 4 / 16 / 64
# 4.7 / 4.8 / 5.1 -> 3.5 / 3.5 / 4.5, Qwen3-30B-A3B 128 x 2048 4.9 / 4.9 / 5.1 -> 3.4 / 3.6 / 4.7, DeepSeek-V2-Lite
# fp32 9.9 / 10.3 / 10.9 -> 6.0 / 6.0 / 10.3. (Dense layers stay on cuBLAS: there the split-K kernel lost at
# 64 tokens, 0.7-0.9x, and tied at 4-16.)
ROUTER_MAX_E = 128            # the measured gates: 64-128 experts over a hidden size of 2048 (4096 at most here)
ROUTER_MAX_D = 4096
ROUTER_TILES = {torch.float32: {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT": 16},
                None: {"BLOCK_N": 16, "BLOCK_K": 256, "SPLIT": 8}}
# a float32 gate with bf16 h as three bf16 parts on the tensor cores (skinny_gemm's split3): the best of three tiles
# in DeepSeek-V2-Lite's graphed step (docs/results/2026-12-02-s24, call 3): against the fp32 CUDA-core dot -1.4% a
# step at bs 64, -0.7% at 32, -0.9% at 17 with 16 x 256 and split 8; 128-wide K steps over 16 splits another
# -0.12 / -0.18 / -0.28%; 32 columns a program +0.45 / +1.0 / +1.4%
ROUTER_SPLIT3_TILES = {"BLOCK_N": 16, "BLOCK_K": 128, "SPLIT": 16}
# Past 64 tokens (prefill) a float32 gate with bf16 h runs as split3 in kernels/tall_gemm.py, a grid of row blocks,
# instead of a cast kernel + SGEMM; False keeps F.linear (the A/B of docs/results/2026-12-02-s25, call 4)
ROUTER_TALL_SPLIT3 = True


def router_logits(h: torch.Tensor, weight: torch.Tensor, gemv: str = "torch", pdl: bool = False) -> torch.Tensor:
    """A router's logits [T, E] in the gate's dtype: `F.linear(h.to(weight.dtype), weight)` (h [T, D], the gate
    [E, D] in bf16 or, DeepSeek's, float32), or, under `--gemv auto` / `skinny` for 1..64 tokens and a gate of at
    most ROUTER_MAX_E experts, kernels/skinny_gemm.py with ROUTER_TILES, which converts h's tiles in registers
    instead of launching a cast (a float32 gate with bf16 h: as three bf16 parts on the tensor cores, `split3`,
    with ROUTER_SPLIT3_TILES; past 64 tokens, `ROUTER_TALL_SPLIT3`, as kernels/tall_gemm.py's row blocks).
    (The engine's fusable routers reach this only past ops.gate_route_fits' sizes:
    OLMoE's and Qwen3's gates from 5 tokens, DeepSeek-V2's fp32 gate from 17, Mixtral's never.) Gates wider than
    ROUTER_MAX_E x ROUTER_MAX_D (DeepSeek-V3's 256 x 7168) keep F.linear: not measured."""
    T = h.shape[0]
    if (gemv in ("auto", "skinny") and _skinny is not None and h.dim() == 2 and h.stride(-1) == 1
            and weight.shape[0] <= ROUTER_MAX_E and weight.shape[1] <= ROUTER_MAX_D
            and _skinny.usable(T, weight, h.dtype)):
        split3 = _skinny.SPLIT3_BF16 and weight.dtype == torch.float32 and h.dtype == torch.bfloat16
        tiles = ROUTER_SPLIT3_TILES if split3 else ROUTER_TILES.get(weight.dtype, ROUTER_TILES[None])
        return _skinny.skinny_gemm(h, weight, out_dtype=weight.dtype, config=tiles, pdl=pdl, split3=split3)
    if (ROUTER_TALL_SPLIT3 and gemv in ("auto", "skinny") and _skinny is not None and h.dim() == 2
            and h.stride(-1) == 1 and T > _skinny.MAX_T and weight.dtype == torch.float32
            and h.dtype == torch.bfloat16 and weight.shape[0] <= ROUTER_MAX_E and weight.shape[1] <= ROUTER_MAX_D
            and weight.stride(-1) == 1):
        return _tall.tall_gemm(h, weight, pdl=pdl)                       # prefill: no cast, no SGEMM
    return F.linear(h.to(weight.dtype), weight)


# From this many tokens `linear_pair` runs a pair that `join_pair_` put in one buffer as ONE GEMM over the joined
# [out_a + out_b, in] weight (a step-probe knob: a huge value runs the two GEMMs in turn, as before)
PAIR_JOIN_MIN_T = STREAM_MAX_T + 1


def _pairable(a: "Linear", b: "Linear") -> bool:
    """Two bias-free Linears with plain contiguous weights of one dtype and in-width, nothing hooked on either."""
    wa, wb = a.weight, b.weight
    return (type(wa) in (torch.Tensor, nn.Parameter) and type(wb) in (torch.Tensor, nn.Parameter)
            and a.bias is None and b.bias is None and wa.dtype == wb.dtype and wa.device == wb.device
            and wa.is_contiguous() and wb.is_contiguous() and wa.shape[1] == wb.shape[1]
            and not (a._forward_hooks or a._forward_pre_hooks or b._forward_hooks or b._forward_pre_hooks))


def join_pair_(a: "Linear", b: "Linear") -> bool:
    """Move a.weight [out_a, in] and b.weight [out_b, in] into the two row ranges of one new [out_a + out_b, in]
    buffer (same values, same total memory; the Parameters become views of it, with requires_grad False), so that
    `linear_pair` can run both as one GEMM. Returns False (nothing changed) where `_pairable` does not hold. The
    idea of vLLM's MergedColumnParallelLinear and of SGLang's fused q_a + kv_a projection for DeepSeek, done after
    loading."""
    if not _pairable(a, b):
        return False
    wa, wb = a.weight, b.weight
    buf = torch.empty(wa.shape[0] + wb.shape[0], wa.shape[1], dtype=wa.dtype, device=wa.device)
    with torch.no_grad():
        buf[:wa.shape[0]].copy_(wa)
        buf[wa.shape[0]:].copy_(wb)
    a.weight = nn.Parameter(buf[:wa.shape[0]], requires_grad=False)
    b.weight = nn.Parameter(buf[wa.shape[0]:], requires_grad=False)
    return True


def joined_weight(wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor | None:
    """The [out_a + out_b, in] weight whose rows are wa's then wb's when `join_pair_` left them so (wb's rows right
    after wa's in one storage), else None."""
    if not (wa.is_contiguous() and wb.is_contiguous() and wa.shape[1] == wb.shape[1] and wa.dtype == wb.dtype
            and wa.untyped_storage().data_ptr() == wb.untyped_storage().data_ptr()
            and wb.data_ptr() == wa.data_ptr() + wa.numel() * wa.element_size()):
        return None
    return wa.as_strided((wa.shape[0] + wb.shape[0], wa.shape[1]), (wa.shape[1], 1))


def linear_pair(x: torch.Tensor, a: "Linear", b: "Linear") -> tuple[torch.Tensor, torch.Tensor]:
    """(a(x), b(x)) for two bias-free Linears reading the same x [..., in] (MLA's q and latent projections).
    Where `linear()` would run the stream GEMV for the joined [out_a + out_b, in] weight (batch 1 under
    `--gemv auto`), one launch computes both (dense_gemv's `second`); from PAIR_JOIN_MIN_T tokens, where
    `join_pair_` put the two weights in one buffer, one GEMM over the joined weight does. Both return two
    NON-contiguous views of one [..., out_a + out_b] buffer (unit last stride; callers take strides or reshape):
    the second layer's launch, ramp and tail saved. Anything else (below PAIR_JOIN_MIN_T another --gemv, an x dtype
    other than the weights', a bias, a packed weight, a hook on either module, separate buffers) runs the two layers
    in turn."""
    s = a.settings
    wa, wb = a.weight, b.weight
    if s is not None and _pairable(a, b) and x.dtype == wa.dtype:
        lead = x.shape[:-1]
        T = lead.numel()
        y = None
        if s.gemv in ("stream", "auto") and _dense_gemv is not None:
            kind = auto_gemv(T, wa.shape[0] + wb.shape[0], wa.shape[1]) if s.gemv == "auto" else s.gemv
            if kind == "stream" and 1 <= T <= STREAM_MAX_T:
                y = _dense_gemv(x.reshape(-1, x.shape[-1]).contiguous(), wa, pdl=s.pdl == "on", second=wb)
        if y is None and T >= PAIR_JOIN_MIN_T and (w := joined_weight(wa, wb)) is not None:
            y = linear(x.reshape(-1, x.shape[-1]), w, None, gemv=s.gemv, pdl=s.pdl == "on")
        if y is not None:
            y = y.view(*lead, -1)
            return y[..., :wa.shape[0]], y[..., wa.shape[0]:]
    return a(x), b(x)


class Linear(nn.Module):
    """A dense projection [in] -> [out] through `linear()`; `settings` (shared RunSettings) picks the GEMV."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, settings=None):
        super().__init__()
        self.in_features, self.out_features, self.settings = in_features, out_features, settings
        self.weight = nn.Parameter(torch.empty(out_features, in_features))           # [out, in]
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s is None:
            return linear(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias, gemv=s.gemv, pdl=s.pdl == "on")

    def forward_float(self, x: torch.Tensor) -> torch.Tensor:
        """self(x).float()'s bits (float32 [..., out]); through __call__ (and its .float() copy) where a hook is
        registered (a tensor-parallel head, calibration), else `linear(float_out=True)`: at decode the stream GEMV
        writes float32 itself."""
        s = self.settings
        if s is None or self._forward_hooks or self._forward_pre_hooks:
            return self(x).float()
        return linear(x, self.weight, self.bias, gemv=s.gemv, pdl=s.pdl == "on", float_out=True)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"
