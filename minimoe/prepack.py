"""The attention RMSNorm packs the quantized q/k/v projection's input on its way out (decode, the pair kernels).

At batch 1 an int8 / int4 / fp8 dense layer runs on the pair decode kernels (kernels/fused_moe_quant_pair.py), which
read x as int32 words of two fp16 values in a paired order (pair_codes.py). For the dense layers the measured tiles
pack x first, in its own launch (`pack_pairs`, ~2 µs in a graphed Mixtral int8 step: twentieth session, call 4),
because packing inside the GEMV has every one of its ~1,000 programs redo it (+1.6% a step, nineteenth session).
The RMSNorm in front of the q/k/v projection already holds the row: with `rms_norm_packed` its one program also
writes the pairs, and the projection takes them (`pair_codes.offer_packed` / `take_packed`) instead of launching a
pack. Same bits as before (the pairs are made from the stored bf16 row by the same code); one launch fewer a layer.

Switch: PREPACK (on; scripts/step_probe.py flips it). It applies where `target` finds a pair-kernel weight that packs
its input at this many rows (dense_packs_input), with the Triton ops; anything else runs the plain norm.
Source: the producer-side fusion of an activation's quantization into the norm in front of it, as TensorRT-LLM and
vLLM do for fp8 (their fused RMSNorm + quant kernels); here the "quantization" is the pair packing.
"""
from __future__ import annotations

import torch

from .qweights import GEMV_MAX_T, QuantWeight

PREPACK = True


def target(attn, x: torch.Tensor):
    """The q/k/v weight whose input the norm should pack for x [B, S, D], or None."""
    if not PREPACK:
        return None
    lin = getattr(attn, "wqkv", None)
    w = getattr(lin, "weight", None)
    settings = getattr(attn, "settings", None)
    if not isinstance(w, QuantWeight) or not w.use_kernels or settings is None or settings.ops != "triton":
        return None
    T = x.numel() // x.shape[-1]
    if not 0 < T <= GEMV_MAX_T or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    from .kernels import fused_moe_quant_pair, fused_moe_quant_small
    if fused_moe_quant_small.decode_variant(w, None, x.dtype) != "pair":
        return None
    return w if fused_moe_quant_pair.dense_packs_input(w, T) else None


def norm_packed(norm, x: torch.Tensor, residual: torch.Tensor | None, w) -> tuple[torch.Tensor, torch.Tensor]:
    """ResidualRMSNorm's (norm(x + residual), x + residual), its pairs offered to w's next linear call."""
    from .kernels import pair_codes, rmsnorm
    y, s, pairs = rmsnorm.rms_norm_packed(x.contiguous(), norm.weight, norm.eps, residual, pair_codes.pack_layout(w),
                                          pdl=norm.settings.pdl == "on")
    pair_codes.offer_packed(w, y.view(-1, y.shape[-1]), pairs)
    return y, (x if s is None else s)
