"""Placement: which part of each weight this process holds, and how to read only that from a checkpoint.

One process may hold a slice of the model: under expert parallelism a contiguous range of each MoE
layer's experts (global ids start..stop-1, addressed through `Experts.expert_offset`); under tensor
parallelism one of `count` equal pieces of a weight along one dimension (attention heads, FFN width,
vocabulary). A `Placement` says so, per parameter; `apply_placement` resizes the parameters of a
model still on the `meta` device, and `recipe_parts` turns a checkpoint recipe (families.py) into
the exact slices to read, so the loader never reads from disk what another rank holds.

A shard of a parameter that minimoe fuses (q/k/v as one `wqkv`, gate/up as one `w13`) is the
concatenation of the same piece of every part: rank r of 2 holds q heads [r·H/2, (r+1)·H/2), the
matching k and v heads, or the gate rows AND the up rows of its half of the FFN width, which is
exactly the layout a tensor-parallel GEMM wants.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class Placement:
    experts: dict = field(default_factory=dict)   # MoE layer -> (start, stop) of its global experts held here
    shards: dict = field(default_factory=dict)    # param name -> (dim, index, count): piece `index` of `count`


def _piece(size: int, index: int, count: int, what: str) -> slice:
    if size % count:
        raise ValueError(f"{what}: {size} does not split into {count} equal pieces")
    n = size // count
    return slice(index * n, (index + 1) * n)


def apply_placement(model: nn.Module, placement: Placement) -> None:
    """Resize the (meta) parameters of `model` to what this process holds."""
    for layer, (start, stop) in placement.experts.items():
        ex = model.layers[layer].ffn.experts
        if not 0 <= start < stop <= ex.n_local:
            raise ValueError(f"layer {layer}: experts [{start}, {stop}) outside its {ex.n_local}")
        ex.w13 = nn.Parameter(ex.w13[start:stop].clone(), requires_grad=False)
        ex.w2 = nn.Parameter(ex.w2[start:stop].clone(), requires_grad=False)
        ex.expert_offset = start
    params = dict(model.named_parameters())
    for name, (dim, index, count) in placement.shards.items():
        owner, attr = name.rsplit(".", 1)
        mod, p = model.get_submodule(owner), params[name]
        sl = [slice(None)] * p.dim()
        sl[dim] = _piece(p.shape[dim], index, count, name)
        setattr(mod, attr, nn.Parameter(p[tuple(sl)].clone(), requires_grad=False))


def _is_expert_param(name: str) -> bool:
    """An Experts stack [E, ...]: `experts.w13` / `w2`, or a pre-quantized one's codes, scales and zero points."""
    stacks = ("experts.w13", "experts.w2")
    return name.endswith(stacks) or name.rsplit(".", 1)[0].endswith(stacks)


def _part_index(shape: list, dim: int | None, shard, expert_range, what: str) -> tuple:
    """The slices of one checkpoint tensor: an expert range on its dim 0 (a fused [E, ...] tensor)
    and/or a tensor-parallel piece on `dim`."""
    index = [slice(None)] * len(shape)
    if expert_range is not None:
        index[0] = slice(*expert_range)
    if shard is not None:
        _, i, count = shard
        index[dim] = _piece(shape[dim], i, count, what)
    return tuple(index) if (expert_range is not None or shard is not None) else ()


def _sliced_shape(shape: list, index: tuple) -> list:
    if not index:
        return list(shape)
    return [len(range(*s.indices(n))) for s, n in zip(index, shape)]


def recipe_parts(name: str, alt: list, shape, placement: Placement | None):
    """A recipe alternative -> (pieces, assembled shape or None when the parts disagree).

    pieces: [(checkpoint name, index)] to concatenate on dim 0, or, for per-expert recipes,
    [[(name, index), ...] per held expert] to stack."""
    shard = placement.shards.get(name) if placement else None
    expert_range = None
    if placement and _is_expert_param(name):
        layer = int(name.split(".")[1])
        expert_range = placement.experts.get(layer)
    if isinstance(alt[0], str):            # a concatenation (a fused [E, ...] tensor counts as one part)
        dim = shard[0] if shard else None
        parts = [(n, _part_index(shape(n), dim, shard, expert_range, n)) for n in alt]
        return parts, _cat_shape([_sliced_shape(shape(n), i) for n, i in parts])
    held = alt[slice(*expert_range)] if expert_range else alt          # per expert: only the held ones
    dim = shard[0] - 1 if shard else None                               # the param's dim 0 is E
    pieces = [[(n, _part_index(shape(n), dim, shard, None, n)) for n in p] for p in held]
    per_expert = [_cat_shape([_sliced_shape(shape(n), i) for n, i in p]) for p in pieces]
    if any(s is None or s != per_expert[0] for s in per_expert):
        return pieces, None
    return pieces, [len(held)] + per_expert[0]


def assembled_shape(parts: list, shape) -> list | None:
    """Shape of the concatenation of [(name, index)] parts on dim 0 (None when their other dims differ)."""
    return _cat_shape([_sliced_shape(shape(n), i) for n, i in parts])


def _cat_shape(shapes: list) -> list | None:
    if any(s[1:] != shapes[0][1:] for s in shapes):
        return None
    return [sum(s[0] for s in shapes)] + shapes[0][1:]


def held_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.device != torch.device("meta"))
