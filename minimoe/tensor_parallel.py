"""Tensor parallelism: split every matrix of a layer over the M ranks of a group, one all-reduce per sublayer.

Megatron-LM's split (arXiv 1909.08053 §3): a column-parallel projection splits its output rows, so
each rank computes a slice of the features with no communication; the row-parallel projection that
consumes them splits its input columns, so each rank produces a partial sum of the full output, and
one all-reduce adds the M partials. Applied here:
    attention   q/k/v rows by head (rank r holds heads [rH/M, (r+1)H/M) and their KV cache), o by
                columns; MLA splits q (or q_b), kv_b and o by head and keeps the latent projection
                and its cache whole on every rank (DeepSeek-V3's inference code does the same)
    dense FFN, shared experts, routed experts   gate/up rows and down columns by FFN width
    LM head     vocab rows; the logits are all-gathered so sampling sees the whole vocabulary
    router, norms, embedding   replicated (tiny, and routing must agree on every rank)
All-reduces: after each attention and after each FFN, where an MoE sums its routed and shared
partials first (one all-reduce for both). OLMoE normalises q and k over the whole projection, which
no rank holds: its RMSNorm becomes distributed, the sum of squares all-reduced (a [T, 2] tensor).
Everything is forward hooks plus a `Placement` (which piece of each weight this rank reads): the
modules themselves never see a rank. A row-parallel bias is added once (kept on rank 0 only).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from . import collective

from .config import ModelConfig
from .instrument import region
from .linear import Linear
from .moe import MoE


def check(cfg: ModelConfig, tp: int) -> None:
    """ValueError naming --tp for a model whose heads, widths or vocabulary do not split into tp pieces."""
    sizes = {"attention heads": cfg.n_heads}
    if any(not cfg.is_moe_layer(i) for i in range(cfg.n_layers)):
        sizes["dense FFN width (intermediate_size)"] = cfg.intermediate_size
    if cfg.attention != "mla":
        sizes["key/value heads"] = cfg.n_kv_heads
    if not cfg.tie_word_embeddings:
        sizes["vocabulary"] = cfg.vocab_size
    if cfg.shared_intermediate_size:
        sizes["shared expert width"] = cfg.shared_intermediate_size
    for i in range(cfg.n_layers):
        if cfg.is_moe_layer(i):
            sizes[f"expert width of layer {i}"] = cfg.layer_moe_width(i)
    for what, n in sizes.items():
        if n % tp:
            raise ValueError(f"--tp {tp}: the model's {what} ({n}) cannot be split into {tp} equal pieces")


def _all_reduce(reduce):
    def hook(module, args, out):
        with region("all_reduce"):
            return reduce(out)
    hook.output_only = True       # reads only the module's output: a fold that makes the module's input may still run
    return hook                   # (norm_fusion.fits: the attention's norm inside its q/k/v GEMV)


def _gather_vocab(group, tp: int):
    """lm_head output [..., V/M] -> [..., V]: rank r's slice lands at columns [rV/M, (r+1)V/M)."""
    def hook(module, args, out):
        with region("all_reduce"):
            parts = out.new_empty(tp, *out.shape)                                 # [M, ..., V/M]
            collective.run(dist.all_gather_into_tensor, parts.view(-1, *out.shape[1:]), out.contiguous(), group=group)
        return torch.movedim(parts, 0, -2).reshape(*out.shape[:-1], tp * out.shape[-1])
    return hook


def _distributed_qk_norm(attn, reduce, q_width: int, k_width: int):
    """OLMoE's q/k RMSNorm over the whole projection, on the wqkv output of a head shard."""
    def hook(module, args, qkv):
        q_norm, k_norm, eps = attn.q_norm.weight, attn.k_norm.weight, attn.cfg.rms_norm_eps
        q, k, v = qkv.split([q_norm.numel(), k_norm.numel(), k_norm.numel()], dim=-1)
        ss = torch.stack([q.float().pow(2).sum(-1), k.float().pow(2).sum(-1)], dim=-1)   # [B, S, 2]
        with region("all_reduce"):
            ss = reduce(ss)
        rq = torch.rsqrt(ss[..., :1] / q_width + eps)
        rk = torch.rsqrt(ss[..., 1:] / k_width + eps)
        # the arithmetic of ops.rms_norm_torch: normalise in fp32, round, then scale by the weight
        return torch.cat([q_norm * (q.float() * rq).to(q.dtype), k_norm * (k.float() * rk).to(k.dtype), v], dim=-1)
    return hook


def _attention(attn, prefix: str, cfg: ModelConfig, r: int, tp: int, reduce, shards: dict) -> None:
    piece = (r, tp)
    if cfg.attention == "mla":
        for name in ("wq.weight", "wq_b.weight", "wkv_b.weight"):
            if hasattr(attn, name.split(".")[0]):
                shards[prefix + name] = (0, *piece)
    else:
        shards[prefix + "wqkv.weight"] = (0, *piece)
        if attn.wqkv.bias is not None:
            shards[prefix + "wqkv.bias"] = (0, *piece)
        if cfg.qk_norm == "full":
            shards[prefix + "q_norm.weight"] = (0, *piece)
            shards[prefix + "k_norm.weight"] = (0, *piece)
            attn.wqkv.register_forward_hook(_distributed_qk_norm(attn, reduce, cfg.n_heads * cfg.head_dim,
                                                                 cfg.n_kv_heads * cfg.head_dim))
            attn.cfg = dataclasses.replace(attn.cfg, qk_norm=None)     # normed by the hook above
    shards[prefix + "wo.weight"] = (1, *piece)
    attn.register_forward_hook(_all_reduce(reduce))


def _swiglu(ffn, prefix: str, r: int, tp: int, shards: dict) -> None:
    shards[prefix + "w13.weight"] = (0, r, tp)          # the gate piece and the up piece (placement.py)
    shards[prefix + "w2.weight"] = (1, r, tp)
    ffn.hidden //= tp


def shard(model, r: int, tp: int, group, placement, reduce) -> None:
    """On the meta model: this rank's shards into `placement.shards`, all-reduce hooks registered.
    reduce: the group's all-reduce (allreduce.make: x -> the sum over the tp ranks)."""
    cfg, shards = model.cfg, placement.shards
    for i, layer in enumerate(model.layers):
        _attention(layer.attn, f"layers.{i}.attn.", cfg, r, tp, reduce, shards)
        f = f"layers.{i}.ffn."
        if isinstance(layer.ffn, MoE):
            shards[f + "experts.w13"] = (1, r, tp)       # [E, 2I, D]: gate and up rows of this width piece
            shards[f + "experts.w2"] = (2, r, tp)        # [E, D, I]
            if layer.ffn.shared is not None:
                _swiglu(layer.ffn.shared, f + "shared.", r, tp, shards)
        else:
            _swiglu(layer.ffn, f, r, tp, shards)
        layer.ffn.register_forward_hook(_all_reduce(reduce))  # routed + shared partials, reduced once
    if not cfg.tie_word_embeddings:                  # a tied head is the embedding: kept whole
        shards["lm_head.weight"] = (0, r, tp)
        model.lm_head.register_forward_hook(_gather_vocab(group, tp))
    for name, (dim, _, count) in shards.items():     # a sharded Linear states its own (local) sizes
        mod = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(mod, Linear) and name.endswith(".weight"):
            attr = "out_features" if dim == 0 else "in_features"
            setattr(mod, attr, getattr(mod, attr) // count)


def finish(model, r: int, tp: int) -> None:
    """After loading: row-parallel biases counted once; the KV cache sized for this rank's heads."""
    cfg = model.cfg
    with torch.no_grad():
        for layer in model.layers:
            if layer.attn.wo.bias is not None and r > 0:
                layer.attn.wo.bias.zero_()
    if cfg.attention != "mla":
        model.cfg = dataclasses.replace(cfg, n_heads=cfg.n_heads // tp, n_kv_heads=cfg.n_kv_heads // tp)
