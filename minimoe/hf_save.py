"""Saving a built model as a Hugging Face checkpoint: the loader's recipes read backwards.

`checkpoint_names.weight_names(cfg)` says, for every minimoe tensor, which Hub tensors it is made of
(q/k/v concatenated into `wqkv`, gate/up into `w13`, per-expert matrices stacked into [E, ...]). Saving
splits each tensor back into those parts under their Hub names (`model.layers.3.mlp.experts.7.up_proj
.weight`, ...), so the folder is an ordinary checkpoint: minimoe, `transformers` and other engines
read it. Each tensor is written in the dtype the source checkpoint stored it in (so a bf16 model
loaded in fp32 and pruned goes back to bf16 without rounding), else in the model's dtype.

config.json is the source's, with the expert count and width updated under the family's own keys
(`COUNT_KEYS`, `WIDTH_KEYS`: the names families.py reads). When layers differ (a globally ranked
pruning), those keys hold the largest value and minimoe's own fields list every layer:
    num_experts_per_layer            [E of layer 0, E of layer 1, ...]   (0 for a dense layer)
    moe_intermediate_size_per_layer  [I of layer 0, ...]
DeepSeek derives its shared experts' width from moe_intermediate_size, so a narrower routed width is
recorded the second way there too. minimoe takes each layer's E and I from the tensors
(loader.with_checkpoint_shapes), so it loads such a checkpoint; transformers builds every layer with
the config's single count and width and refuses it (its size-mismatch error; README "Pruning").
Tokenizer and generation files are copied unchanged.
DeepSeek-V3's multi-token-prediction layer, which minimoe does not load, is not carried over.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .checkpoint_names import weight_names
from .config import ModelConfig
from .loader import Checkpoint

# model_type -> config.json keys of the routed-expert count (every alias families.py accepts) and width
COUNT_KEYS = {"olmoe": ("num_experts", "num_local_experts"), "mixtral": ("num_local_experts", "num_experts"),
              "qwen2_moe": ("num_experts",), "qwen3_moe": ("num_experts", "num_local_experts"),
              "deepseek": ("n_routed_experts",), "deepseek_v2": ("n_routed_experts", "num_experts"),
              "deepseek_v3": ("n_routed_experts", "num_local_experts")}
WIDTH_KEYS = {"olmoe": "intermediate_size", "mixtral": "intermediate_size", "qwen2_moe": "moe_intermediate_size",
              "qwen3_moe": "moe_intermediate_size", "deepseek": "moe_intermediate_size",
              "deepseek_v2": "moe_intermediate_size", "deepseek_v3": "moe_intermediate_size"}
SHARED_WIDTH_TIED = ("deepseek", "deepseek_v2", "deepseek_v3")   # shared width = n_shared_experts x routed width
PER_LAYER_KEYS = ("num_experts_per_layer", "moe_intermediate_size_per_layer")
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _split_rows(cfg: ModelConfig, t: torch.Tensor, n_parts: int) -> list:
    """A concatenation on dim 0 back into its parts: q/k/v (3 parts) or gate/up halves (2)."""
    if n_parts == 1:
        return [t]
    if n_parts == 2:
        return list(t.chunk(2, dim=0))
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    assert n_parts == 3 and t.shape[0] == q + 2 * kv, (n_parts, t.shape)
    return list(t.split([q, kv, kv], dim=0))


def hf_tensors(model, cfg: ModelConfig) -> dict:
    """{Hub tensor name: view of the model's tensor} in the Hub's per-expert layout."""
    params = dict(model.named_parameters())
    out = {}
    for name, alternatives in weight_names(cfg).items():
        parts, t = alternatives[0], params[name].detach()
        if isinstance(parts[0], list):                   # stacked experts: [E, ...] -> each expert's parts
            for e, names in enumerate(parts):
                out.update(zip(names, _split_rows(cfg, t[e], len(names))))
        else:
            out.update(zip(parts, _split_rows(cfg, t, len(parts))))
    return out


def _source_dtypes(folder: Path | None) -> dict:
    """{tensor name: dtype} as the source checkpoint stores them (headers only); {} without one."""
    if folder is None or not any(Path(folder).glob("*.safetensors")):
        return {}
    from safetensors import safe_open
    ckpt, out = Checkpoint(Path(folder)), {}
    for f in sorted(set(ckpt.where.values())):
        with safe_open(str(f), "pt") as h:
            for name in h.keys():
                dtype = SAFETENSORS_DTYPES.get(h.get_slice(name).get_dtype())
                if dtype is not None and ckpt.where.get(name) == f:
                    out[name] = dtype
    return out


def hf_config(source: dict, cfg: ModelConfig) -> dict:
    """The source config.json with this model's expert counts and widths (module docstring)."""
    hf = {k: v for k, v in source.items() if k not in PER_LAYER_KEYS}
    moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    counts = [cfg.layer_experts(i) for i in moe]
    widths = [cfg.layer_moe_width(i) for i in moe]
    keys = COUNT_KEYS[cfg.family]
    for k in [k for k in keys if k in hf] or keys[:1]:
        hf[k] = max(counts)
    # DeepSeek's shared experts are n_shared_experts x moe_intermediate_size wide: that key stays theirs
    tied = cfg.family in SHARED_WIDTH_TIED and cfg.shared_intermediate_size > 0
    width_key = WIDTH_KEYS[cfg.family]
    if not tied:
        hf[width_key] = max(widths)
    if len(set(counts)) > 1:
        hf["num_experts_per_layer"] = [cfg.layer_experts(i) if cfg.is_moe_layer(i) else 0 for i in range(cfg.n_layers)]
    if len(set(widths)) > 1 or (tied and widths[0] != hf.get(width_key, widths[0])):
        hf["moe_intermediate_size_per_layer"] = [cfg.layer_moe_width(i) if cfg.is_moe_layer(i) else 0
                                                 for i in range(cfg.n_layers)]
    return hf


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only read by setting)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)          # elsewhere: set a strict mask for the instant it takes to read the old one
    os.umask(mask)
    return mask


def follow_umask(path) -> None:
    """Give a file safetensors wrote (always 0600) the mode open() would have: 0666 less the umask."""
    Path(path).chmod(0o666 & ~_umask())


def save_checkpoint(model, cfg: ModelConfig, source_config: dict, out, source_folder=None,
                    extra_files: dict | None = None, weights_folder=None) -> Path:
    """Write `out`/model.safetensors + config.json (+ the source folder's tokenizer and generation
    files, + extra_files {name: JSON-able}). Each tensor keeps the dtype `weights_folder`'s safetensors store it
    in (default: source_folder; the model's dtype without either). `out` must not exist or be empty (ValueError)."""
    from safetensors.torch import save_file
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory: choose a new --out")
    if cfg.family not in COUNT_KEYS:
        raise ValueError(f"{cfg.family} is not an MoE family minimoe can save")
    stored = _source_dtypes(weights_folder or source_folder)
    default = max(stored.values(), key=list(stored.values()).count) if stored else model.embed.weight.dtype
    tensors = {name: t.to("cpu", stored.get(name, default), copy=True).contiguous()
               for name, t in hf_tensors(model, cfg).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    follow_umask(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(source_config, cfg), indent=2) + "\n")
    if source_folder is not None:
        for f in Path(source_folder).iterdir():
            if f.is_file() and f.suffix != ".safetensors" and f.name not in (
                    "config.json", "model.safetensors.index.json", *(extra_files or {})) and not f.name.startswith("."):
                shutil.copy2(f, out / f.name)
    for name, data in (extra_files or {}).items():
        (out / name).write_text(json.dumps(data, indent=2) + "\n")
    return out
