"""Loader: a card, a local directory or a hub id -> a built model holding real or dummy weights.

Steps, in the order errors can happen (all checks before any heavy allocation):
  1. resolve `--model` and read its config (checkpoint.py: a card, a directory or a hub id;
     generation_config.json adds its stop ids; safetensors files opened as untrusted input);
  2. translate config.json (families.py); for real weights, read only the safetensors *headers*
     and take each MoE layer's expert count and width from its tensors (a pruned checkpoint may
     have uneven layers); build the model on the `meta` device (no memory);
  3. apply a placement, if a parallel plan gave one: the experts and tensor shards this process
     holds (`Placement`), by resizing the meta parameters;
  4. match every minimoe tensor to its recipe (families.weight_names): missing, unexpected and
     mis-shaped tensors are reported together in one error, with names and both shapes;
  5. allocate on the target device and stream tensor by tensor straight into place (cat/stack into
     the fused q/k/v and expert tensors, dtype converted by `copy_`), reading only the slices the
     placement keeps (safetensors' `get_slice`): no full CPU copy, nothing another rank holds.
Checkpoints are untrusted input: safetensors only, never `torch.load`; every safetensors error
becomes a `CheckpointError` naming the file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from . import parallel, prequant
from .checkpoint import Checkpoint, CheckpointError, StateDict, read_config, resolve  # noqa: F401 (re-exported)
from .checkpoint_names import expert_shapes, ignored_name, weight_names
from .config import ModelConfig
from .model import Transformer
from .placement import Placement, apply_placement, assembled_shape, recipe_parts
from .quant import quantize_
from .settings import RunSettings

# ---- matching ----------------------------------------------------------------------------------------

def _describe_misshape(pieces, shape, want: list) -> str:
    """The checkpoint tensors behind a mis-shaped parameter: every part of a concatenation; for stacked
    experts, the parts of the experts that are off (four at most)."""
    if not (pieces and isinstance(pieces[0], list)):
        return ", ".join(f"{n} {shape(n)}" for n, _ in pieces)
    bad = [parts for parts in pieces if assembled_shape(parts, shape) != want[1:]]
    shown = ", ".join(f"{n} {shape(n)}" for parts in bad[:4] for n, _ in parts)
    return (shown + (f" and {len(bad) - 4} more experts" if len(bad) > 4 else "")) if bad else f"{len(pieces)} experts"


def plan_checkpoint(model: Transformer, ckpt, placement: Placement | None = None) -> dict:
    """{param name: pieces to read}, or one CheckpointError listing every problem."""
    params = dict(model.named_parameters())
    recipes = prequant.weight_names(model) if prequant.is_prequantized(model.cfg) else weight_names(model.cfg)
    assert set(recipes) == set(params), set(recipes) ^ set(params)   # our own wiring, not user input
    have = set(ckpt.where)
    chosen, missing, misshaped, claimed = {}, [], [], set()
    for name, alternatives in recipes.items():
        # every name any alternative mentions is ours, so a missing sibling is not also "unexpected"
        names = [n for a in alternatives for p in a for n in ([p] if isinstance(p, str) else p)]
        claimed.update(n for n in names if n in have)
        alt = next((a for a in alternatives if all(n in have for p in a for n in ([p] if isinstance(p, str) else p))),
                   None)
        if alt is None:
            missing += [n for p in alternatives[0] for n in ([p] if isinstance(p, str) else p) if n not in have]
            continue
        pieces, got = recipe_parts(name, alt, ckpt.shape, placement)
        want = list(params[name].shape)
        if got != want:
            misshaped.append(f"{name}: expected {want}, checkpoint gives {got or 'parts of different shapes'} "
                             f"({_describe_misshape(pieces, ckpt.shape, want)})")
        chosen[name] = pieces
    skippable = getattr(ckpt, "ignorable", lambda n: False)          # prequant_int4.Int4View: zero biases
    unexpected = sorted(n for n in have - claimed if not ignored_name(model.cfg, n) and not skippable(n))
    if any(n.endswith("weight_scale_inv") for n in unexpected):
        raise CheckpointError("this checkpoint stores FP8 block-quantized weights (weight_scale_inv) but its "
                              "config.json has no quantization_config {quant_method: fp8, weight_block_size: "
                              "[128, 128]}, which is how minimoe knows to load them as fp8 (prequant.py)")
    problems = []
    for kind, names in (("missing", missing), ("mis-shaped", misshaped), ("unexpected", unexpected)):
        problems += [f"{kind}: {n}" for n in names[:SHOWN]]
        if len(names) > SHOWN:
            problems.append(f"... and {len(names) - SHOWN} more {kind}")
    if problems:
        counts = f"{len(missing)} missing, {len(misshaped)} mis-shaped, {len(unexpected)} unexpected"
        raise CheckpointError(f"checkpoint does not match the {model.cfg.family} config ({counts}):\n  "
                              + "\n  ".join(problems))
    return chosen


SHOWN = 5          # names of each kind a mismatch error lists (the counts say how many there are)


def _fill(param: torch.Tensor, pieces, get) -> None:
    """Copy recipe pieces into the allocated parameter (cat on dim 0, stack per expert)."""
    def cat_into(dst, parts):
        row = 0
        for name, index in parts:
            t = get(name, index)
            dst[row:row + t.shape[0]].copy_(t)
            row += t.shape[0]
    with torch.no_grad():
        if pieces and isinstance(pieces[0], list):
            for e, parts in enumerate(pieces):
                cat_into(param[e], parts)
        else:
            cat_into(param, pieces)


def load_weights(model: Transformer, source, placement: Placement | None = None) -> None:
    """Match (plan_checkpoint), then copy every tensor into the already-allocated model."""
    chosen = plan_checkpoint(model, source, placement)
    params = dict(model.named_parameters())
    for name, pieces in chosen.items():
        _fill(params[name], pieces, source.get)


# ---- building --------------------------------------------------------------------------------------

def _keep_fp32(name: str, cfg: ModelConfig) -> bool:
    """The router (DeepSeek) and V3's selection bias stay float32 whatever the model dtype."""
    return name.endswith("router.bias") or (cfg.router_fp32 and name.endswith("router.weight"))


def build_meta(cfg: ModelConfig, settings=None, dtype: torch.dtype = torch.float32) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg, settings)
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if _keep_fp32(name, cfg) else dtype)
    return model


def with_checkpoint_shapes(cfg: ModelConfig, ckpt) -> ModelConfig:
    """The config with each MoE layer's expert count and width taken from the checkpoint's tensors."""
    shapes = expert_shapes(cfg, set(ckpt.where), getattr(ckpt, "logical_shape", ckpt.shape))  # int4: unpacked
    moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    if not shapes or all(shapes.get(i, (cfg.layer_experts(i), cfg.layer_moe_width(i)))
                         == (cfg.n_experts, cfg.moe_intermediate_size) for i in moe):
        return cfg
    E = tuple(shapes.get(i, (cfg.layer_experts(i), 0))[0] for i in range(cfg.n_layers))
    I = tuple(shapes.get(i, (0, cfg.layer_moe_width(i)))[1] for i in range(cfg.n_layers))
    return dataclasses.replace(cfg, experts_per_layer=E, moe_width_per_layer=I)


def weight_bytes(model: Transformer) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def ram_bytes() -> tuple[int, int] | None:
    """(available, total) bytes of this machine's RAM: MemAvailable from /proc/meminfo (free pages plus the page
    cache the kernel can reclaim), else sysconf's free pages; None where neither exists."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        pass
    if hasattr(os, "sysconf"):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    return None


def check_fits(nbytes: int, device: torch.device, what: str = "the weights", hint: str = "") -> None:
    """Refuse, with numbers, a model that cannot fit (never an OOM traceback or a killed process).
    On CPUs under torchrun the host's ranks share its RAM: their needs are added (parallel.host_ram_need)."""
    share = None
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where = torch.cuda.get_device_name(device)
    elif device.type == "cpu" and (ram := ram_bytes()) is not None:
        free, total = ram
        nbytes, free, share = parallel.host_ram_need(nbytes, free)
        where = "this machine's RAM"
    else:
        return
    if nbytes > free:
        need = f"{nbytes / 2**30:.1f} GiB" + (f" ({share})" if share else "")
        raise MemoryError(f"{what} need {need} but {where} has {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
                          + (f"; {hint}" if hint and nbytes // 2 <= free else ""))


def init_dummy(model: Transformer, seed: int = 0, placement: Placement | None = None) -> None:
    """Random weights with the real shapes, made on the device. Norm weights 1, matrices N(0, 0.02)
    (transformers' initializer_range), biases 0: the residual stream grows only ~sqrt(layers), so
    bf16 activations stay finite over long decodes, and random routers spread tokens evenly.
    With a placement, a placed tensor is drawn whole and this rank keeps its piece: every parallel
    plan holds the values one process would (parallel.py)."""
    gen = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif placement is not None and parallel.is_placed(name, placement):
                full = p.new_empty(parallel.full_shape(name, p.shape, model.cfg, placement))
                p.copy_(parallel.held_piece(full.normal_(0.0, 0.02, generator=gen), name, model.cfg, placement))
            else:
                p.normal_(0.0, 0.02, generator=gen)


def open_weights(weights: str, folder: Path | None, device: torch.device):
    """--weights -> a Checkpoint, or None for dummy weights. 'auto' = the model directory's own
    safetensors (a directory without any is an error: dummy weights must be asked for); a config
    card has no weights, so 'auto' means dummy there."""
    if weights == "auto":
        if folder is None:
            return None
        weights = str(folder)
    if weights == "dummy":
        return None
    wdir = Path(weights).expanduser()
    if not wdir.is_dir():
        raise CheckpointError(f"weights directory {weights} does not exist")
    return Checkpoint(wdir, device="cpu" if device.type == "meta" else str(device))


def weights_source(weights: str, folder: Path | None) -> str | None:
    """Where build_model reads the tensors for --weights `weights` (folder: read_config's): the --weights directory,
    the model's own folder ("auto"), or None for random weights. For headers and JSON provenance."""
    if weights == "dummy" or (weights == "auto" and folder is None):
        return None
    return str(Path(folder if weights == "auto" else weights).expanduser().resolve())


def build_model(model: str, weights: str = "dummy", *, dtype=torch.bfloat16, device="cpu", settings=None,
                top_k: int | None = None, seed: int = 0, prepare=None):
    """--model/--weights -> (Transformer on `device`, ModelConfig, checkpoint folder or None).

    weights: "dummy" (random, real shapes), "auto" (the model directory's own files) or a directory.
    prepare: an optional callable(meta model) -> Placement | None, run on the meta model before any
    allocation: where a parallel plan swaps modules and says which experts and shards this rank holds.
    Raises CheckpointError / ValueError (bad input, one line) or MemoryError (does not fit)."""
    device = torch.device(device)
    settings = settings if settings is not None else RunSettings(device=str(device))
    if settings.device == "auto":
        settings.device = str(device)
    settings.resolve_()                             # the modules share this instance; "auto" resolved here
    if prepare is None and settings.ep * settings.tp > 1:
        prepare = parallel.plan_for(settings)       # under torchrun: this rank's experts and shards
    cfg, folder = read_config(model)
    ckpt = open_weights(weights, folder, device)
    if ckpt is not None and prequant.is_prequantized(cfg):
        ckpt = prequant.view(ckpt, cfg)             # GPTQ / AWQ int4 in minimoe's layout (prequant_int4.py)
    if ckpt is not None:
        cfg = with_checkpoint_shapes(cfg, ckpt)
    if top_k is not None:                           # after the shapes: a pruned layer may hold fewer experts
        cfg = cfg.with_top_k(top_k)
    net = build_meta(cfg, settings, dtype)
    placement = prepare(net) if prepare is not None else None
    if placement is not None:
        apply_placement(net, placement)
    if ckpt is not None and prequant.is_prequantized(cfg):
        prequant.swap_(net, ckpt, placement)        # fp8 128x128-block / int4 twins, read as stored
    if ckpt is not None:
        plan_checkpoint(net, ckpt, placement)       # every name/shape error before any allocation
    q = getattr(settings, "quant", "none")
    check_fits(weight_bytes(net), device, "the weights" if q == "none" else
               f"the weights (in {str(dtype).replace('torch.', '')}: they are built so before --quant {q} packs them)",
               hint="in bf16 (--dtype bf16) they would take half" if dtype == torch.float32 else "")
    net = net.to_empty(device=device)
    if ckpt is None and placement is None:
        init_dummy(net, seed)
    elif ckpt is None:
        init_dummy(net, seed, placement)
    else:
        load_weights(net, ckpt, placement)
    if hasattr(prepare, "finish"):                  # a parallel plan's steps after the weights are in
        prepare.finish(net)
    quantized = None
    if prequant.is_prequantized(cfg):               # as stored; dummy weights get the checkpoint's format
        dummy = "fp8-block" if prequant.int4_scheme(cfg) is None else "int4-zp"
        quantized = prequant.finalize_(net, settings) if ckpt is not None else quantize_(net, settings, dummy)
    elif settings.quant != "none":
        quantized = quantize_(net, settings)        # Linear weights and Experts -> quantized twins (quant.py)
    if quantized is not None:                       # the format, on the whole model's config (net.cfg is a TP rank's)
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "weight_format": quantized.extra["weight_format"]})
    for m in net.modules():                         # layout only: MLA's two projections of x in one buffer
        if hasattr(m, "join_projections_"):
            m.join_projections_()
    return net.eval(), cfg, (folder if ckpt is not None else None)


def export_weights(model: Transformer, target: dict) -> None:
    """The reverse of load_weights: copy minimoe's tensors into another model's state_dict tensors
    (e.g. transformers', so both run the same random weights)."""
    chosen = plan_checkpoint(model, StateDict(target))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, pieces in chosen.items():
            src = params[name]
            groups = [(src[e], parts) for e, parts in enumerate(pieces)] if isinstance(pieces[0], list) \
                else [(src, pieces)]
            for tensor, parts in groups:
                row = 0
                for n, _ in parts:
                    dst = target[n]
                    dst.copy_(tensor[row:row + dst.shape[0]])
                    row += dst.shape[0]
