"""Pre-quantized checkpoints: fp8 weights with 128x128 block scales, loaded as stored and run in fp8
(GPTQ / AWQ int4: prequant_int4.py, through the same seams).

DeepSeek-V3 and the Hub's Qwen3-*-FP8 releases store each quantized linear as two tensors,
    `<name>.weight`            float8_e4m3fn [N, K]
    `<name>.weight_scale_inv`  float32 [ceil(N/128), ceil(K/128)], the multiplier: W = q · s[n//128, k//128]
and say so in config.json: `quantization_config: {quant_method: "fp8", weight_block_size: [128, 128],
activation_scheme: "dynamic"}` (modules_to_not_convert lists what stayed bf16). Converting those to
bf16 at load would double the bytes and throw away the point of the release; here they are read
into qweights.QuantMatrix stacks (bits 0, group 128, row_block 128) that the fp8 kernels consume
directly, with the block scales applied per K-step and activations quantized per token and 128-group
(kernels/fused_moe_quant.py), the way DeepGEMM and vLLM run them.

Which modules: exactly those whose checkpoint tensors have a `weight_scale_inv` beside them (so
modules_to_not_convert needs no parsing). Where minimoe fuses several Hub tensors into one (q/k/v as
`wqkv`, gate/up as `w13`), the scales are concatenated the same way; if a part's rows are not a
multiple of 128 the concatenated block rows no longer line up with row // 128, so that module's
scales are spread to one per row after loading (`finalize_`), costing 4 bytes per row and group.

Loader seams: `view` (the checkpoint as the loader reads it: int4 kinds convert their layout there),
`swap_` (meta model, before allocation), `weight_names` (the recipes for the swapped parameters, given to
the loader's matcher), `finalize_` (after the copy). Other quantization_config kinds (compressed-tensors,
bitsandbytes, GPTQ / AWQ outside what prequant_int4 maps) are refused by `unsupported` with the list of
what is supported.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from . import checkpoint_names, prequant_int4
from .config_fields import CheckpointError
from .experts import Experts
from .linear import Linear
from .qexperts import QuantExperts
from .quant import stored_counts as quant_stored_counts, swap_module
from .qweights import E4M3, FP8_BLOCK, QuantMatrix, QuantWeight

SUPPORTED = ("fp8 checkpoints with 128x128 block scales (quantization_config {quant_method: fp8, "
             "weight_block_size: [128, 128]}: DeepSeek-V3, Qwen3-*-FP8) and 4-bit GPTQ / AWQ (GEMM) checkpoints "
             "with group size 128")


_INSTEAD = "Start from the bf16 checkpoint and quantize at load with --quant fp8|int8|int4|nf4|bnb-int8"


def unsupported(qc) -> str | None:
    """None when a config.json quantization_config is one minimoe loads, else the sentence why not."""
    if not isinstance(qc, dict):
        return f"quantization_config {qc!r} is not a JSON object"
    method = qc.get("quant_method")
    if method in prequant_int4.METHODS:
        why = prequant_int4.unsupported(qc)
        return None if why is None else f"{why}; minimoe loads {SUPPORTED}. {_INSTEAD}"
    block = qc.get("weight_block_size")
    if method == "fp8" and list(block or []) == [FP8_BLOCK, FP8_BLOCK] and \
            qc.get("activation_scheme", "dynamic") == "dynamic" and qc.get("fmt", "e4m3") == "e4m3":
        return None
    what = f"quant_method {method!r}" + (f" with weight_block_size {block}" if block else "")
    return (f"pre-quantized checkpoints of this kind ({what}) are not supported: minimoe loads {SUPPORTED}; "
            f"compressed-tensors and bitsandbytes checkpoints are not. {_INSTEAD}")


def is_prequantized(cfg) -> bool:
    return bool(cfg.extra.get("quantization_config"))


def int4_scheme(cfg) -> prequant_int4.Scheme | None:
    """The GPTQ / AWQ scheme of a pre-quantized config, None for fp8 (and plain configs)."""
    qc = cfg.extra.get("quantization_config") or {}
    return prequant_int4.scheme(qc) if qc.get("quant_method") in prequant_int4.METHODS else None


def view(ckpt, cfg):
    """The checkpoint as the loader reads it: int4 kinds through prequant_int4.Int4View, fp8 as stored."""
    s = int4_scheme(cfg)
    return ckpt if s is None else prequant_int4.Int4View(ckpt, s)


def _scale_name(name: str, int4: bool = False) -> str:
    return name + ("_scale" if int4 else "_scale_inv")


def _parts(alternative) -> list[str]:
    return [n for p in alternative for n in ([p] if isinstance(p, str) else p)]


def swap_(model: nn.Module, ckpt, placement=None) -> None:
    """On the meta model: every Linear / Experts whose checkpoint weights all carry scales gets a twin in the
    checkpoint's format: fp8 (codes [.., N, K] e4m3, scales [.., block rows, ceil(K/128)]) or, through
    `view`, int4 (prequant_int4.meta_matrix: codes [.., N, K/8], scales and zero points [.., N, K/128]).
    Run after a parallel plan's placement (the shapes are then this rank's): a twin's tensors are cut where
    its dense parameter was, on whole groups / blocks (prequant_int4.meta_matrix and `_fp8_parts` check it,
    CheckpointError), and an Experts twin takes over the plan's hooks (quant.swap_module)."""
    recipes = checkpoint_names.weight_names(model.cfg)
    have, shape = set(ckpt.where), ckpt.shape
    int4 = int4_scheme(model.cfg) is not None
    shards = placement.shards if placement is not None else {}
    swapped = 0

    def scaled(full: str, names: list[str]) -> bool:
        """Whether the checkpoint stores these parts quantized: all (True), none (False), or some (an error:
        minimoe's fused module, e.g. q/k/v or gate/up, holds one format)."""
        marks = [_scale_name(n, int4) in have for n in names]
        if any(marks) and not all(marks):
            raw = {True: [], False: []}
            for n, m in zip(names, marks):
                raw[m].append(n.rsplit(".", 1)[0])
            raise CheckpointError(f"{full}: {', '.join(raw[False][:3])} unquantized but {', '.join(raw[True][:3])} "
                                  "quantized; minimoe runs each fused module (q/k/v, gate/up, an expert) in one format")
        return bool(names) and all(marks)

    for name, module in list(model.named_modules()):
        for attr, child in list(module.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(child, Linear) and isinstance(child.weight, torch.Tensor):
                names = _parts(recipes.get(full + ".weight", [[]])[0])
                if scaled(full, names):
                    swapped += 1
                    N, K = child.weight.shape
                    if int4:
                        q = prequant_int4.meta_matrix(QuantWeight, (), N, K, names[0])
                    else:
                        parts = _fp8_parts(names, shape, shards.get(full + ".weight"), 0, K)
                        q = _meta_matrix(QuantWeight, (N, K), (_blocks(parts), -(-K // FP8_BLOCK)), parts)
                    del child.weight
                    child.weight = q
                    _place_parts(placement, full + ".weight", q)
            elif type(child) is Experts:
                per_expert = recipes[full + ".w13"][0]
                both = _parts(per_expert) + _parts(recipes[full + ".w2"][0])
                if isinstance(per_expert[0], list) and scaled(full, both):
                    swapped += 1
                    make = _meta_experts_int4 if int4 else _meta_experts
                    twin = make(child, recipes[full + ".w2"][0], per_expert, shape,
                                shards.get(full + ".w13"), shards.get(full + ".w2"))
                    swap_module(module, attr, child, twin)
                    _place_parts(placement, full + ".w13", twin.w13)
                    _place_parts(placement, full + ".w2", twin.w2)
    if not swapped:
        marker = ".qweight" if int4 else ".weight_scale_inv"
        method = model.cfg.extra["quantization_config"].get("quant_method")
        raise CheckpointError(f"config.json has a quantization_config ({method}) but the checkpoint holds no quantized "
                              f"tensors ({marker}): drop quantization_config to load these weights as they are")


def _place_parts(placement, base: str, q: QuantMatrix) -> None:
    """A tensor-parallel cut of the dense parameter `base` applies to its twin's codes, scales and zero points
    (their dims line up: [.., N, K/8], [.., N, K/128])."""
    if placement is not None and base in placement.shards:
        for p in ("qdata", "scale", "zero"):
            if getattr(q, p) is not None:
                placement.shards[f"{base}.{p}"] = placement.shards[base]


def _meta_matrix(cls, code_shape, scale_shape, parts: list[int]) -> QuantMatrix:
    *lead, N, K = code_shape
    m = cls(torch.empty(code_shape, dtype=E4M3, device="meta"),
            torch.empty(*lead, *scale_shape, dtype=torch.float32, device="meta"), None, K, 0, FP8_BLOCK, FP8_BLOCK)
    m.block_parts = parts           # rows of each concatenated part: finalize_ spreads misaligned scales
    return m


def _fp8_parts(names: list[str], shape, cut, lead: int, K: int) -> list[int]:
    """This rank's rows of each concatenated part of an fp8 block-scaled weight (the checkpoint's rows, or
    their piece when a tensor-parallel `cut` (dim, index, count) splits the rows). A cut must fall on 128 x 128
    block boundaries: rows (dim lead) of every part and the reduction K (dim lead + 1) in whole blocks per
    rank; else CheckpointError naming the tensor."""
    dim, count = (cut[0] - lead, cut[2]) if cut else (None, 1)
    rows = [shape(n)[0] for n in names]
    bad = next((n for n, r in zip(names, rows) if r % (FP8_BLOCK * count)), None) if dim == 0 and count > 1 else \
        (names[0] if dim == 1 and count > 1 and K % FP8_BLOCK else None)
    if bad is not None:
        raise CheckpointError(f"{bad}: --tp {count} would cut its {FP8_BLOCK}x{FP8_BLOCK} scale blocks (each rank's "
                              "rows and inputs must be whole blocks); run this fp8 checkpoint with fewer ranks")
    return [r // count for r in rows] if dim == 0 else rows


def _blocks(parts: list[int]) -> int:
    return sum(-(-n // FP8_BLOCK) for n in parts)


def _meta_experts(ex: Experts, down: list, gate_up: list, shape, cut13=None, cut2=None) -> QuantExperts:
    E, two_i, D = ex.w13.shape
    I = ex.w2.shape[2]
    parts13 = _fp8_parts(gate_up[0], shape, cut13, 1, D)                 # [E, 2I, D]: dim 1 = the parts' rows
    w13 = _meta_matrix(QuantMatrix, (E, two_i, D), (_blocks(parts13), -(-D // FP8_BLOCK)), parts13)
    parts2 = _fp8_parts(down[0], shape, cut2, 1, I)                      # [E, D, I]: a TP cut is on I (dim 2)
    w2 = _meta_matrix(QuantMatrix, (E, D, I), (_blocks(parts2), -(-I // FP8_BLOCK)), parts2)
    return QuantExperts(w13, w2, ex.w13.dtype, ex.expert_offset, ex.settings)


def _meta_experts_int4(ex: Experts, down: list, gate_up: list, shape, cut13=None, cut2=None) -> QuantExperts:
    E, two_i, D = ex.w13.shape
    I = ex.w2.shape[2]
    w13 = prequant_int4.meta_matrix(QuantMatrix, (E,), two_i, D, gate_up[0][0])
    w2 = prequant_int4.meta_matrix(QuantMatrix, (E,), D, I, down[0][0])
    return QuantExperts(w13, w2, ex.w13.dtype, ex.expert_offset, ex.settings)


def weight_names(model: nn.Module) -> dict:
    """checkpoint_names.weight_names with the swapped parameters' recipes: `X.qdata` (X a Linear's
    `.weight` or an `experts.w13` / `w2`) reads what `X` read, `X.scale` the same tensors' `weight_scale_inv`
    (fp8) or `weight_scale` (int4, through `view`), and int4's `X.zero` their `weight_zero` (per expert,
    stacked, for experts)."""
    recipes = checkpoint_names.weight_names(model.cfg)
    int4 = int4_scheme(model.cfg) is not None
    for base, m in model.named_modules():
        if not isinstance(m, QuantMatrix):
            continue
        first = recipes.pop(base)[0]
        recipes[base + ".qdata"] = [first]
        for param, suffix in (("scale", "_scale" if int4 else "_scale_inv"), ("zero", "_zero")):
            if param == "zero" and not int4:
                continue
            recipes[f"{base}.{param}"] = [[[n + suffix for n in p] if isinstance(p, list) else p + suffix
                                           for p in first]]
    return recipes


def finalize_(model: nn.Module, settings):
    """After the copy: int4 kinds, prequant_int4.finalize_ (format "int4", or "int4-zp" where zero points
    stay); fp8: spread the scales of modules whose concatenated parts do not start on a 128-row boundary to
    one per row (row_block 1), and let dense fp8 layers use the kernels on a GPU. Returns the model's config
    with the weight format recorded (as quant.quantize_ does)."""
    s = int4_scheme(model.cfg)
    if s is not None:
        zero = prequant_int4.finalize_(model, settings)
        described = {"quant": "int4-zp" if zero else "int4", "bits_per_weight": 4.5 if zero else 4.25,
                     "lm_head": isinstance(model.lm_head.weight, QuantMatrix), "source": f"checkpoint ({s.method})"}
        return _record(model, settings, described)
    for m in model.modules():
        if not isinstance(m, QuantMatrix) or not hasattr(m, "block_parts"):
            continue
        if isinstance(m, QuantWeight):
            m.use_kernels, m.compute_dtype = str(settings.device).startswith("cuda"), settings.torch_dtype
        if all(n % FP8_BLOCK == 0 for n in m.block_parts[:-1]):
            continue
        s, rows, start = m.scale3, [], 0
        for n in m.block_parts:
            nb = -(-n // FP8_BLOCK)
            rows.append(s[:, start:start + nb].repeat_interleave(FP8_BLOCK, dim=1)[:, :n])
            start += nb
        spread = torch.cat(rows, dim=1)                                                # [E, N, NG]
        m.scale = nn.Parameter(spread if m.scale.dim() == 3 else spread[0], requires_grad=False)
        m.row_block = 1
    described = {"quant": "fp8-block", "lm_head": isinstance(model.lm_head.weight, QuantMatrix),
                 "bits_per_weight": 8.0, "source": "checkpoint"}
    return _record(model, settings, described)


def _record(model: nn.Module, settings, described: dict):
    """The weight format into model.cfg; in one process also the loaded model's own byte counts (what a
    partially quantized checkpoint really streams), which the roofline reads instead of re-quantizing a
    meta copy. Under a plan a rank holds a piece, so the meta estimate stays."""
    if settings.ep * settings.tp == 1:
        described["stored"] = quant_stored_counts(model)
    model.cfg = dataclasses.replace(model.cfg, extra={**model.cfg.extra, "weight_format": described})
    return model.cfg
