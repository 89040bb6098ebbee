"""The attention's RMSNorm inside its q/k/v GEMV at batch 1 (`--fold-attn-norm`).

A layer at decode starts with

    h, s  = rmsnorm(x + residual), x + residual      kernels/rmsnorm.py: one small launch on the critical path
    qkv   = h Wqkvᵀ                                   linear.py: the stream GEMV at one token

kernels/norm_gemv.py folds the first launch into the second: 1 / rms(s) is one number per token, so every GEMV
program computes W · (g ⊙ s) for its columns while it adds up Σ s², and scales by 1 / rms at the end. One launch a
layer fewer; s (the residual stream) is the unfused bits, q/k/v skip h's bf16 rounding (hence a switch of its own).

Where it applies (`fits`): `--fold-attn-norm on`, a one-token step that is not a prefill (the first layer too: its
norm has no residual to add), an attention module with a fused q/k/v projection (attention.Attention; MLA's
projections are a pair, not folded) whose weight is plain, contiguous and in x's dtype, a norm weight in x's dtype,
a layer where `--fuse-rope` does not take the q/k/v GEMV (its rope epilogue owns that launch; with WITH_ROPE the fold
goes into that kernel instead, below), nothing hooked on the q/k/v projection or the layer's norm (calibration;
OLMoE's distributed q/k norm under tensor parallelism), and on the attention no hook but those that read only its
output (`output_only`: tensor_parallel.py's all-reduce, which still runs, since the attention module is still
called): the others see every input, so they keep the unfused path. Under a tensor-parallel plan `--fold-attn-norm
auto` stays off (not yet measured on two GPUs); `on` takes it. model.Block asks `fits` before the norm and passes
what `run` made to the attention (Attention.heads' `qkv`, or `q`).

Where `--fuse-rope` owns the q/k/v GEMV (Mixtral, Qwen1.5/2-MoE: rope and the cache write in its epilogue,
rope_fusion.py), the knob WITH_ROPE folds the norm into that kernel as well (kernels/qkv_gemv_rope.py's `norm`): the
norm, the GEMV and rope in one launch; `run` then hands the attention q already rotated.

The model's last norm and its LM head are the same pair (`head_fits` / `run_head`, the knob HEAD, off: no faster): the
logits come out in float32 from the kernel (rounded to x's dtype first, as lm_head(h).float()).
"""
from __future__ import annotations

import torch

from . import rope_fusion
from .instrument import note

try:
    from .kernels import norm_gemv as _kernel
except ImportError:       # no Triton: --ops triton (and with it this) is refused before a model is built
    _kernel = None

MAX_T = 1      # tokens a step: the stream GEMV's batch-1 regime (linear.auto_gemv sends 2 tokens to cuBLAS here)
# The final norm inside the LM head's GEMV too (under --fold-attn-norm): measured no faster, so off. In the graphed bs-1
# step (docs/results/2026-12-03-s31, call 4) it was +1.2% (OLMoE) / +1.6% (Qwen3-30B-A3B) on the head's [4, 1024]
# tiles (~12,600 programs, each re-reading x, the residual and g, 12 KB, from L2 beside 16 KB of weights), and a tie
# with the unfused norm + head on [16, 256] tiles (-0.01% / +0.13%). A step_probe knob, with HEAD_CONFIG for the tile.
HEAD = False
HEAD_CONFIG: dict | None = None
# The embedding's row gather inside the first layer's fold too (the token's row read from the table by the GEMV's
# programs; `embed_fits`): one PyTorch launch a step fewer (2.1 µs PDL-off in OLMoE's bs-1 profile, thirty-first
# session). In the graphed bs-1 step (docs/results/2026-12-04-s32, call 1) -0.30% (OLMoE) / -0.19% (Qwen3-30B-A3B),
# the baseline repeated at -0.07% / -0.11%; bench.py OLMoE bs 1 1,049.8 out tok/s against 1,047.7 / 1,049.4. On; a
# step_probe knob.
EMBED = True
# The norm inside --fuse-rope's q/k/v GEMV + rope kernel too (built in the forty-third session). In the graphed bs-1
# step (docs/results/2026-12-05-s44, call 1; 3 rounds) -1.61% (Qwen1.5-MoE) / -0.16% (Mixtral, whose 4,096-wide norm
# was already a small part of a 6.4 ms step); bench.py bs 1 alternating (call 3): Qwen1.5-MoE 617.7 / 617.4 out tok/s
# against 604.9 / 605.6 (+2.0%), Mixtral 6.425 / 6.429 ms a step against 6.428 / 6.433. On; a step_probe knob.
WITH_ROPE = True


def _hooked(*modules) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _input_hooked(module) -> bool:
    """Hooks on `module` that see its input: every pre-hook, and forward hooks not marked `output_only`."""
    return bool(module._forward_pre_hooks) or any(not getattr(h, "output_only", False)
                                                   for h in module._forward_hooks.values())


def fits(block, x: torch.Tensor, residual: torch.Tensor | None, step, cache) -> bool:
    """Whether `run` applies to layer `block` (model.Block) for its input x [B, S, D], residual stream and cache."""
    attn = block.attn
    s = attn.settings
    if s is None or getattr(s, "fold_attn_norm", "off") != "on" or _kernel is None or step.fresh:
        return False
    B, S, D = x.shape
    lin = getattr(attn, "wqkv", None)
    norm = block.attn_norm
    if lin is None or not 1 <= B * S <= MAX_T or norm.weight.dtype != x.dtype or (residual is not None
                                                                                  and residual.dtype != x.dtype):
        return False
    if not _kernel.usable(B * S, D, lin.weight, x.dtype, lin.bias) or (lin.bias is not None
                                                                         and lin.bias.dtype != x.dtype):
        return False
    if _hooked(lin, norm) or _input_hooked(attn):
        return False
    return WITH_ROPE or not rope_fusion.fits(attn, x, cache)


def run(block, x: torch.Tensor | None, residual: torch.Tensor | None, step, cache=None, rot=None, gather=None):
    """x, residual [B, S, D] (None in the first layer) -> (made, x + residual): made {"qkv": [B, S, N]}, the q/k/v
    projection of rmsnorm(x + residual), as ResidualRMSNorm then the projection; or, where --fuse-rope takes the layer
    (WITH_ROPE), {"q": [B, S, H, d]} rotated, with this step's k and v written into `cache` (rot: model.Rotary), as
    the norm then rope_fusion.run. gather (ids [B, S], table [V, D]), x and residual None: x = table[ids] read inside
    the kernel (`embed_fits`), returned as the residual stream (not with rope: embed_fits says no)."""
    attn, norm = block.attn, block.attn_norm
    pdl = attn.settings.pdl == "on"
    if gather is None and rope_fusion.fits(attn, x, cache):
        note("attention", "norm+qkv+rope")
        q, s = rope_fusion.run(attn, x, step, cache, rot, norm=(residual, norm.weight, norm.eps))
        return {"q": q}, s
    note("attention", "norm+qkv")
    if gather is not None:
        ids, table = gather
        B, S = ids.shape
        y, s = _kernel.norm_gemv(table, None, norm.weight, norm.eps, attn.wqkv.weight, attn.wqkv.bias, pdl=pdl,
                                 ids=ids.reshape(B * S))
        return {"qkv": y.view(B, S, -1)}, s.view(B, S, -1)
    B, S, D = x.shape
    y, s = _kernel.norm_gemv(x.reshape(B * S, D), None if residual is None else residual.reshape(B * S, D),
                             norm.weight, norm.eps, attn.wqkv.weight, attn.wqkv.bias, pdl=pdl)
    return {"qkv": y.view(B, S, -1)}, s.view(B, S, D)


def embed_fits(model, ids: torch.Tensor, step, cache) -> bool:
    """Whether the first layer's fold also gathers the embedding rows of ids [B, S] (model.Transformer): EMBED on,
    the fold fitting layer 0 (one token, nothing hooked), a plain table in the model's dtype, nothing hooked on it."""
    emb = model.embed
    table = emb.weight
    if not EMBED or ids.dtype != torch.int64 or ids.dim() != 2 or _hooked(emb) or not model.layers:
        return False
    if type(table) not in (torch.Tensor, torch.nn.Parameter) or table.dim() != 2 or not table.is_contiguous():
        return False
    x = table[:1].view(1, 1, -1).expand(ids.shape[0], ids.shape[1], -1)     # the layer's input, for shape and dtype
    layer = model.layers[0]                   # the rope kernel's norm has no gather: the table's rows come first there
    return fits(layer, x, None, step, cache) and not rope_fusion.fits(layer.attn, x, cache)


def head_fits(model, x: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether `run_head` applies to the model's final norm and LM head (model.Transformer) for x [B, 1, D]."""
    s = model.settings
    if (not HEAD or s is None or getattr(s, "fold_attn_norm", "off") != "on" or _kernel is None
            or residual is None):
        return False
    B, S, D = x.shape
    head, norm = model.lm_head, model.norm
    if not 1 <= B * S <= MAX_T or norm.weight.dtype != x.dtype or residual.dtype != x.dtype:
        return False
    if not _kernel.usable(B * S, D, head.weight, x.dtype, head.bias) or (head.bias is not None
                                                                          and head.bias.dtype != x.dtype):
        return False
    return not _hooked(head, norm)


def run_head(model, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """x, residual [B, 1, D] -> float32 logits [B, 1, V] = lm_head(rmsnorm(x + residual)).float() up to h's rounding."""
    B, S, D = x.shape
    note("lm_head", "norm+head")
    y, _ = _kernel.norm_gemv(x.reshape(B * S, D).contiguous(), residual.reshape(B * S, D).contiguous(),
                             model.norm.weight, model.norm.eps, model.lm_head.weight, model.lm_head.bias,
                             pdl=model.settings.pdl == "on", config=HEAD_CONFIG, out_dtype=torch.float32)
    return y.view(B, S, -1)
