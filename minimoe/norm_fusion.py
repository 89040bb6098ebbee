"""The attention sublayer's RMSNorm (+ residual add) inside the q/k/v projection's GEMV at batch 1 (`--fold-norm`).

A layer at decode runs   s = x + residual;  h = norm(s)   (kernels/rmsnorm.py: one small launch)
                         qkv = h Wqkvᵀ                    (a GEMV whose every program reads all of h)
At one token the first launch moves a few kilobytes, so the GEMV makes h itself (kernels/norm_gemv.py: a prologue
of one reduction over D, then h's chunks inside its loop; program 0 stores s). `Block` hands the attention module a
`Deferred` norm instead of h; the projection that reads it is one of

  * `rope_fusion.run` (Mixtral, Qwen1.5/2-MoE: q/k/v + rope + cache write, kernels/qkv_gemv_rope.py),
  * `linear` below for the q/k/v stream GEMV (OLMoE, Qwen3: their q/k norm needs all of a head, so rope stays in
    its own kernel after the GEMV),
  * `linear_pair` below for MLA's q (or q LoRA-down) and latent projections in one launch (DeepSeek).

The same switch as the MoE side's fold (the norm inside the router's kernel, model.Block / gate.py): with both, a
one-token layer has no RMSNorm launch left. `fits` says yes only where one of those three will take the deferred
norm (a plain weight in x's dtype, nothing hooked on the projection or the norm, `--gemv` running the stream GEMV
at one token, a row of at most `MAX_D`); anything else runs the norm kernel first, as before. The arithmetic is the
norm kernel's, rounding for rounding (tests/test_norm_fusion.py).
"""
from __future__ import annotations

import torch

from .instrument import note
from . import rope_fusion

try:
    from .kernels import norm_gemv as _kernel
except ImportError:       # no Triton: --ops triton (and with it --fold-norm on) is refused before a model is built
    _kernel = None

ATTENTION = True   # fold the attention-side norm where it fits (False: only the router's; an A/B knob for step_probe)
MAX_T = 1          # one token a step: the stream GEMV's batch-1 regime


class Deferred:
    """h = norm(x + residual) for one token [1, 1, D], left to the projection that reads it.
    residual_out: where x + residual lands (written by that projection's kernel; x itself when residual is None)."""

    def __init__(self, x: torch.Tensor, residual: torch.Tensor | None, norm):
        self.x, self.residual, self.norm = x, residual, norm
        self.residual_out = x if residual is None else torch.empty_like(x)

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    def args(self) -> tuple:
        """(residual or None, norm weight, eps, residual_out): the kernels' `norm` argument."""
        return self.residual, self.norm.weight, self.norm.eps, self.residual_out


def _plain(lin, x: torch.Tensor) -> bool:
    """A Linear whose weight the stream GEMV reads as it is: a contiguous tensor in x's dtype, bias likewise, no hooks."""
    w, b = lin.weight, lin.bias
    return (type(w) in (torch.Tensor, torch.nn.Parameter) and w.dtype == x.dtype and w.is_contiguous()
            and (b is None or (b.dtype == x.dtype and b.is_contiguous()))
            and not (lin._forward_hooks or lin._forward_pre_hooks))


def _stream(settings) -> bool:
    return settings.gemv in ("stream", "auto")   # linear.auto_gemv: the stream GEMV at one token, every shape


def fits(attn, x: torch.Tensor, residual: torch.Tensor | None, norm, cache) -> bool:
    """Whether `Block` may hand `attn` (attention.Attention or mla.MLAttention) a `Deferred` norm for x, residual
    [B, S, D] (the previous sublayer's output and the stream) and norm (layers.ResidualRMSNorm)."""
    s = attn.settings
    if s is None or s.fold_norm != "on" or not ATTENTION or _kernel is None:
        return False
    B, S, D = x.shape
    if B * S > MAX_T or _kernel.check_norm_inputs(x, residual, norm.weight):
        return False
    if norm._forward_hooks or norm._forward_pre_hooks:
        return False
    if hasattr(attn, "wqkv"):                                     # grouped-query attention
        if rope_fusion.fits(attn, x, cache):
            return True
        return _stream(s) and _plain(attn.wqkv, x)
    a = attn.wq_a if attn.cfg.q_lora_rank else attn.wq            # MLA: the joined pair
    b = attn.wkv_a
    return (_stream(s) and _plain(a, x) and _plain(b, x) and a.bias is None and b.bias is None
            and a.weight.shape[1] == b.weight.shape[1])


def linear(lin, h: Deferred) -> torch.Tensor:
    """lin(norm(x + residual)) [1, 1, N] for the deferred h (where `fits` took the q/k/v stream GEMV)."""
    note("attention", "norm+qkv")
    residual, g, eps, res_out = h.args()
    D = h.x.shape[-1]
    s = lin.settings
    y, _ = _kernel.norm_gemv(h.x.view(1, D), None if residual is None else residual.view(1, D), g, eps, lin.weight,
                             bias=lin.bias, residual_out=res_out.view(1, D), pdl=s.pdl == "on")
    return y.view(*h.shape[:-1], -1)


def linear_pair(h: Deferred, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """(a(norm(x + residual)), b(...)) in one launch, as linear.linear_pair's joined GEMV: two views of one buffer."""
    note("attention", "norm+q+latent")
    residual, g, eps, res_out = h.args()
    D = h.x.shape[-1]
    y, _ = _kernel.norm_gemv(h.x.view(1, D), None if residual is None else residual.view(1, D), g, eps, a.weight,
                             second=b.weight, residual_out=res_out.view(1, D), pdl=a.settings.pdl == "on")
    y = y.view(*h.shape[:-1], -1)
    return y[..., :a.weight.shape[0]], y[..., a.weight.shape[0]:]
