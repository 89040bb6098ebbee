"""Loader: a card, a local directory or a hub id -> a built model holding real or dummy weights.

Steps, in the order errors can happen (all checks before any heavy allocation):
  1. resolve `--model`: a card name/alias (models/), a directory with config.json, or a hub id
     fetched with `huggingface_hub.snapshot_download` (json + safetensors only; honours
     HF_HUB_OFFLINE; never runs a checkpoint's code);
  2. translate config.json (families.py) and build the model on the `meta` device (no memory);
  3. for real weights, read only the safetensors *headers* (single file or sharded index) and match
     every minimoe tensor to its recipe: missing, unexpected and mis-shaped tensors are reported
     together in one error, with names and both shapes;
  4. allocate on the target device and stream tensor by tensor straight into place (cat/stack into
     the fused q/k/v and expert tensors, dtype converted by `copy_`): no full CPU copy of the model.
Checkpoints are untrusted input: safetensors only, never `torch.load`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import cards
from .config import ModelConfig, RunSettings
from .families import config_from_hf, ignored_name, weight_names
from .model import Transformer

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]


class CheckpointError(ValueError):
    pass


def resolve(model: str) -> tuple[dict, Path | None]:
    """--model -> (config.json dict, directory holding it or None for a card)."""
    try:
        return cards.load_card(model), None
    except KeyError:
        pass
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json")
        return json.loads((path / "config.json").read_text()), path
    if model.count("/") != 1 or path.exists():
        raise CheckpointError(f"unknown model {model!r}: not a model card ({', '.join(cards.card_names())}), "
                              f"not a directory, and not a hub id of the form org/name")
    folder = _download(model)
    return json.loads((folder / "config.json").read_text()), folder


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise CheckpointError(f"{repo_id} is not in the local Hugging Face cache and {why}") from e
    except Exception as e:  # network failures, gated or missing repos: say which, briefly
        raise CheckpointError(f"could not fetch {repo_id} from the Hugging Face hub: {type(e).__name__}: {e}") from e


class Checkpoint:
    """The safetensors files of a directory, opened lazily; `shape` reads only headers."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from safetensors import safe_open
        self._open, self.device = safe_open, str(device)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.where = {name: folder / f for name, f in weight_map.items()}
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no *.safetensors files in {folder}")
            self.where = {}
            for f in files:
                with safe_open(f, "pt") as h:
                    self.where.update({name: f for name in h.keys()})
        self.handles = {}

    def _handle(self, name: str):
        f = self.where[name]
        if f not in self.handles:
            if not f.exists():
                raise CheckpointError(f"{f.name}, named by the index for {name}, is missing")
            self.handles[f] = self._open(f, "pt", device=self.device)
        return self.handles[f]

    def shape(self, name: str) -> list[int]:
        return list(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)


def _flatten(part) -> list[str]:
    return [part] if isinstance(part, str) else list(part)


def _assembled_shape(alt: list, shape) -> list[int] | None:
    """Shape the recipe alternative produces: parts cat on dim 0; per-expert parts stacked."""
    def cat(names):
        shapes = [shape(n) for n in names]
        if any(s[1:] != shapes[0][1:] for s in shapes):
            return None
        return [sum(s[0] for s in shapes)] + shapes[0][1:]
    if isinstance(alt[0], str):
        return cat(alt)
    per_expert = [cat(p) for p in alt]
    if any(s is None or s != per_expert[0] for s in per_expert):
        return None
    return [len(alt)] + per_expert[0]


def _misshape_detail(alt: list, shape, want: list[int]) -> str:
    """Name the parts that are off: per expert for stacked recipes, every part for concatenations."""
    if isinstance(alt[0], str):
        return ", ".join(f"{n} {shape(n)}" for n in alt)
    bad = [(e, p) for e, p in enumerate(alt) if _assembled_shape([_flatten(p)], shape) != [1] + want[1:]]
    shown = [f"{n} {shape(n)}" for _, p in bad[:4] for n in _flatten(p)]
    more = f" and {len(bad) - 4} more experts" if len(bad) > 4 else ""
    return ", ".join(shown) + more if bad else f"{len(alt)} experts"


def plan_checkpoint(model: Transformer, ckpt) -> dict:
    """{param name: chosen recipe alternative}, or one CheckpointError listing every problem."""
    params = dict(model.named_parameters())
    recipes = weight_names(model.cfg)
    assert set(recipes) == set(params), set(recipes) ^ set(params)   # our own wiring, not user input
    have = set(ckpt.where)
    chosen, missing, misshaped, claimed = {}, [], [], set()
    for name, alternatives in recipes.items():
        # every name any alternative mentions is ours, so a missing sibling is not also "unexpected"
        claimed.update(n for a in alternatives for p in a for n in _flatten(p) if n in have)
        alt = next((a for a in alternatives if all(n in have for p in a for n in _flatten(p))), None)
        if alt is None:
            missing += [n for p in alternatives[0] for n in _flatten(p) if n not in have]
            continue
        got, want = _assembled_shape(alt, ckpt.shape), list(params[name].shape)
        if got != want:
            misshaped.append(f"{name}: expected {want}, checkpoint gives {got or 'parts of different shapes'} "
                             f"({_misshape_detail(alt, ckpt.shape, want)})")
        chosen[name] = alt
    unexpected = sorted(n for n in have - claimed if not ignored_name(model.cfg, n))
    if any(n.endswith("weight_scale_inv") for n in unexpected):
        raise CheckpointError("this checkpoint stores FP8 block-quantized weights (weight_scale_inv); "
                              "minimoe loads bf16/fp16/fp32 checkpoints only")
    problems = [f"missing: {n}" for n in missing[:50]] + [f"mis-shaped: {m}" for m in misshaped[:50]] + \
               [f"unexpected: {n}" for n in unexpected[:50]]
    if problems:
        counts = f"{len(missing)} missing, {len(misshaped)} mis-shaped, {len(unexpected)} unexpected"
        raise CheckpointError(f"checkpoint does not match the {model.cfg.family} config ({counts}):\n  "
                              + "\n  ".join(problems))
    return chosen


def _fill(param: torch.Tensor, alt: list, get) -> None:
    """Copy recipe parts into the allocated parameter (cat on dim 0, stack per expert)."""
    def cat_into(dst, names):
        row = 0
        for n in names:
            t = get(n)
            dst[row:row + t.shape[0]].copy_(t)
            row += t.shape[0]
    with torch.no_grad():
        if isinstance(alt[0], str):
            cat_into(param, alt)
        else:
            for e, names in enumerate(alt):
                cat_into(param[e], _flatten(names))


class StateDict:
    """An in-memory {name: tensor} (e.g. a transformers model's state_dict) seen as a checkpoint."""

    def __init__(self, tensors: dict):
        self.tensors, self.where = tensors, dict.fromkeys(tensors)

    def shape(self, name: str) -> list[int]:
        return list(self.tensors[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def _keep_fp32(name: str, cfg: ModelConfig) -> bool:
    """The router (DeepSeek) and V3's selection bias stay float32 whatever the model dtype."""
    return name.endswith("gate_bias") or (cfg.router_fp32 and name.endswith("ffn.gate.weight"))


def build_meta(cfg: ModelConfig, settings: RunSettings | None, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg, settings)
    for name, p in model.named_parameters():
        p.data = p.data.to(torch.float32 if _keep_fp32(name, cfg) else dtype)
    return model


def weight_bytes(model: Transformer) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_fits(nbytes: int, device: torch.device, what: str = "the weights") -> None:
    """Refuse, with numbers, a model that cannot fit (never an OOM traceback or a killed process)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where = torch.cuda.get_device_name(device)
    elif device.type == "cpu" and hasattr(os, "sysconf"):
        page = os.sysconf("SC_PAGE_SIZE")
        free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
        where = "this machine's RAM"
    else:
        return
    if nbytes > free:
        raise MemoryError(f"{what} need {nbytes / 2**30:.1f} GiB but {where} "
                          f"has {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")


def init_dummy(model: Transformer, seed: int = 0) -> None:
    """Random weights with the real shapes, made on the device. Norm weights 1, matrices N(0, 0.02)
    (transformers' initializer_range), biases 0: the residual stream grows only ~sqrt(layers), so
    bf16 activations stay finite over long decodes, and random routers spread tokens evenly."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)


def load_weights(model: Transformer, source) -> None:
    """Match (plan_checkpoint), then copy every tensor into the already-allocated model."""
    chosen = plan_checkpoint(model, source)
    params = dict(model.named_parameters())
    for name, alt in chosen.items():
        _fill(params[name], alt, source.get)


def build_model(model: str, weights: str = "dummy", *, dtype=torch.bfloat16, device="cpu",
                settings: RunSettings | None = None, top_k: int | None = None, seed: int = 0):
    """--model/--weights -> (Transformer on `device`, ModelConfig, checkpoint folder or None).
    weights: "dummy" (random, real shapes), "auto" (the model directory's own files) or a directory."""
    device = torch.device(device)
    hf, folder = resolve(model)
    cfg = config_from_hf(hf)
    if top_k is not None:
        cfg = cfg.with_top_k(top_k)
    if weights == "auto":
        weights = "dummy" if folder is None else str(folder)
    ckpt = None
    if weights != "dummy":
        wdir = Path(weights).expanduser()
        if not wdir.is_dir():
            raise CheckpointError(f"weights directory {weights} does not exist")
        ckpt = Checkpoint(wdir, device="cpu" if device.type == "meta" else str(device))
    net = build_meta(cfg, settings, dtype)
    if ckpt is not None:
        plan_checkpoint(net, ckpt)                  # every name/shape error before any allocation
    check_fits(weight_bytes(net), device)
    net = net.to_empty(device=device)
    if ckpt is None:
        init_dummy(net, seed)
    else:
        load_weights(net, ckpt)
    return net.eval(), cfg, (folder if ckpt is not None else None)


def export_weights(model: Transformer, target: dict) -> None:
    """The reverse of load_weights: copy minimoe's tensors into another model's state_dict tensors
    (e.g. transformers', so both run the same random weights)."""
    chosen = plan_checkpoint(model, StateDict(target))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, alt in chosen.items():
            src = params[name]
            parts = [(src, alt)] if isinstance(alt[0], str) else [(src[e], _flatten(p)) for e, p in enumerate(alt)]
            for tensor, names in parts:
                row = 0
                for n in names:
                    dst = target[n]
                    dst.copy_(tensor[row:row + dst.shape[0]])
                    row += dst.shape[0]
