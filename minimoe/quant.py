"""Quantization at load: `quantize_(model, settings)` swaps weights for their quantized twins, in place.

The gpt-fast recipe: build the model as usual (a bf16 checkpoint or dummy weights with the real
shapes), then walk it once and replace
    each `Linear`'s weight  -> a packed weight object (qweights.QuantWeight / qbnb.BnbWeight) that
                               `linear.linear()` hands the input to, so no model code changes;
    each `Experts` module   -> its quantized twin (qexperts.QuantExperts / qbnb.BnbExperts), which
                               every expert path (loop, grouped, fused) already knows how to ask.
What stays in full precision, and why:
    the router gate         its logits pick the experts; a rounding there changes which weights run,
                            an error no later layer can undo (AutoFP8 and DeepSeek-V3 keep it too)
    the shared-expert gate  a [1, D] gate, the same argument, and no bytes to save
    norms and embeddings    a norm is D numbers; the embedding is a row lookup, B rows a step
    the LM head             unless --quant-lm-head: the one matrix every token pays for at full V,
                            where an error shows directly in the logits
One layer is quantized at a time and its bf16 tensors dropped, so the transient is one layer.

FORMATS (the `--quant` values) say how a dense weight and an expert stack become codes; "fp8-block"
(128x128 block scales) and "int4-zp" (int4 with zero points) are not flag values: pre-quantized
checkpoints (prequant.py: fp8; prequant_int4.py: GPTQ / AWQ) arrive in them.
The format is written into `cfg.extra["weight_format"]`, which the benchmark's roofline reads to
count the real bytes of a step (bench/roofline.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from . import qbnb
from .experts import Experts
from .linear import Linear
from .qexperts import QuantExperts
from .qweights import (FP8_BLOCK, QuantMatrix, QuantWeight, quantize_fp8, quantize_int4, quantize_int8)


@dataclass(frozen=True)
class QuantFormat:
    stack: Callable        # w [E, N, K] (or [N, K]), cls -> QuantMatrix of that class
    dense_cls: type        # the class of a Linear's packed weight
    experts_cls: type      # the class of a quantized Experts
    bits_per_weight: float  # for the README and the header (scales included)
    what: str


FORMATS = {
    "fp8": QuantFormat(quantize_fp8, QuantWeight, QuantExperts, 8.0,
                       "W8A8 e4m3, per-row weight scales, per-token activation scales (fp8 tensor cores on a GPU)"),
    "int8": QuantFormat(quantize_int8, QuantWeight, QuantExperts, 8.0, "W8A16, per-row scales"),
    "int4": QuantFormat(quantize_int4, QuantWeight, QuantExperts, 4.25, "W4A16, groups of 128, symmetric"),
    "int4-zp": QuantFormat(lambda w, cls=QuantMatrix: quantize_int4(w, zero_point=True, cls=cls), QuantWeight,
                           QuantExperts, 4.5, "W4A16, groups of 128 with zero points (GPTQ / AWQ checkpoints)"),
    "nf4": QuantFormat(qbnb.quantize_nf4, qbnb.BnbWeight, qbnb.BnbExperts, 4.5,
                       "bitsandbytes NF4, an fp32 absmax per 64"),
    "bnb-int8": QuantFormat(qbnb.quantize_bnb_int8, qbnb.BnbWeight, qbnb.BnbExperts, 8.0,
                            "bitsandbytes LLM.int8 vector-wise (threshold 0)"),
    "fp8-block": QuantFormat(lambda w, cls=QuantMatrix: quantize_fp8(w, FP8_BLOCK, cls), QuantWeight, QuantExperts,
                             8.0, "e4m3 with 128x128 block scales (DeepSeek-V3, Qwen3-FP8 checkpoints)"),
}


def stays_full_precision(name: str, module: Linear, quant_lm_head: bool) -> bool:
    """Linears quantize_ leaves alone: the LM head (unless asked) and the shared-expert gate [1, D]."""
    if name == "lm_head":
        return not quant_lm_head
    return module.out_features == 1 or name.endswith("shared.gate")


def _swap_linear(module: Linear, fmt: QuantFormat, use_kernels: bool) -> None:
    with torch.no_grad():
        packed = fmt.stack(module.weight.detach(), cls=fmt.dense_cls)
    packed.use_kernels, packed.compute_dtype = use_kernels, module.weight.dtype
    del module.weight                        # a Parameter slot cannot hold a module: free it first
    module.weight = packed


def quantize_experts(ex: Experts, fmt: str) -> QuantExperts:
    """The quantized twin of one dense Experts module (the layer benchmark and tests use it alone)."""
    f = FORMATS[fmt]
    with torch.no_grad():
        return f.experts_cls.quantize(ex, lambda w: f.stack(w, cls=_stack_cls(f)))


# where torch keeps a module's forward hooks (nn.Module.__init__): a parallel plan's hooks go with the swap
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called")


def swap_module(parent: torch.nn.Module, attr: str, old: torch.nn.Module, new: torch.nn.Module) -> None:
    """parent.attr = new, which takes over `old`'s forward hooks. An expert-parallel plan registers its dispatch /
    combine hooks on the `Experts` module (dispatch.attach, on the meta model, before the weights exist); its
    quantized twin gets the very hook dicts, so the plan's handles stay valid."""
    for hooks in _HOOK_DICTS:
        if hasattr(old, hooks):
            setattr(new, hooks, getattr(old, hooks))
    setattr(parent, attr, new)


def _swap_experts(parent: torch.nn.Module, attr: str, ex: Experts, fmt: str) -> None:
    """Replace `ex` by its quantized twin (which keeps its expert_offset, qexperts.py) and its hooks."""
    swap_module(parent, attr, ex, quantize_experts(ex, fmt))


def _stack_cls(fmt: QuantFormat) -> type:
    return qbnb.BnbMatrix if fmt.experts_cls is qbnb.BnbExperts else QuantMatrix


def quantize_(model: torch.nn.Module, settings, fmt: str | None = None):
    """Swap `model`'s Linear weights and Experts for the quantized twins of `fmt` (default
    settings.quant), in place; works on the meta device too (to count bytes). Returns the model's
    config with `extra["weight_format"]` recorded (also set as model.cfg).
    Raises KeyError for an unknown format, ImportError when bitsandbytes is missing."""
    name = fmt or settings.quant
    f = FORMATS[name]
    use_kernels = str(settings.device).startswith("cuda")
    # Names, not modules: a list of the modules would keep every replaced bf16 Experts alive until the end,
    # and a bf16 Mixtral (93 GB) plus its int8 twin (47 GB) does not fit an H200.
    for full in [n for n, _ in model.named_modules() if n]:
        parent_name, _, attr = full.rpartition(".")
        parent = model.get_submodule(parent_name)
        child = getattr(parent, attr, None)
        if type(child) is Experts:
            _swap_experts(parent, attr, child, name)
        elif isinstance(child, Experts) and not isinstance(child, QuantExperts):
            raise ValueError(f"--quant {name}: {full} is a {type(child).__name__}, which quantize_ does not "
                             "know how to quantize")
        elif isinstance(child, Linear) and isinstance(child.weight, torch.Tensor) \
                and not stays_full_precision(full, child, settings.quant_lm_head):
            _swap_linear(child, f, use_kernels)
        del child
        if torch.cuda.is_available() and full.count(".") == 1 and full.startswith("layers."):
            torch.cuda.empty_cache()         # give the bf16 copy of the layer before back to the allocator
    described = {"quant": name, "lm_head": bool(settings.quant_lm_head), "bits_per_weight": f.bits_per_weight}
    model.cfg = dataclasses.replace(model.cfg, extra={**model.cfg.extra, "weight_format": described})
    return model.cfg


def stored_counts(model: torch.nn.Module) -> dict:
    """A model's weights as stored, for the roofline (bench/roofline.py): `packed` bytes outside the routed
    experts (codes, scales, zero points, codebooks, buffers), `plain` parameters outside them still in a float
    dtype (counted in the run's compute dtype), and `expert_bytes`, every routed expert's bytes as they are
    (packed, or left dense by a partially quantized checkpoint)."""
    packed = plain = expert_bytes = 0
    for name, p in model.named_parameters():
        if ".experts." in name:
            expert_bytes += p.numel() * p.element_size()
        elif p.dtype.is_floating_point and p.dtype.itemsize >= 2 and not name.endswith((".scale", ".zero")):
            plain += p.numel()                                      # left in the compute dtype
        else:
            packed += p.numel() * p.element_size()
    packed += sum(b.numel() * b.element_size() for _, b in model.named_buffers() if b is not None)
    return {"packed": packed, "plain": plain, "expert_bytes": expert_bytes}


def check_quant(s, cfg) -> str | None:
    """None when settings `s` (resolved) can quantize this model on this machine, else the one sentence
    saying why not (runtime.check_settings raises it as a UsageError)."""
    if s.quant_lm_head and s.quant == "none":
        return "--quant-lm-head needs --quant FORMAT"
    if cfg.extra.get("quantization_config"):
        kind = cfg.extra["quantization_config"].get("quant_method")
        if s.quant != "none":
            return (f"--quant {s.quant}: this checkpoint is already quantized ({kind}) and runs as stored; "
                    "use --quant none")
        return None             # under a plan each rank reads its pieces, cut on whole groups / blocks (prequant.py)
    if s.quant == "none":
        return None
    device = s.torch_device
    if s.quant == "fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return "--quant fp8 needs fp8 tensor cores (an sm89+ GPU: Ada, Hopper); this GPU is older"
    if s.quant in ("nf4", "bnb-int8"):
        try:
            qbnb._lib()
        except ImportError as e:
            return str(e)
    return None


def weight_format(cfg) -> dict | None:
    """What quantize_ (or prequant) recorded about the weights' format, None for plain weights."""
    return cfg.extra.get("weight_format")
