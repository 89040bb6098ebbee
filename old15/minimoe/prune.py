"""Expert pruning: rank experts (or their FFN neurons) from calibration statistics, then slice them out.

Two ways to make an MoE smaller (calibrate.py collects the statistics both rank by):
  inter-expert  drop whole experts of a layer: their w13/w2 slices, their router rows and, for
                DeepSeek-V3, their selection-bias entries. Routing then runs over the survivors with
                the family's own maths (softmax over the remaining logits, top-k, renormalisation),
                which is exactly the unpruned model with the dropped experts' logits at -inf.
                Ranked by `EXPERT_SCORES`: frequency, summed gate weight, REAP saliency, random.
  intra-expert  narrow every expert's FFN width I: drop the gate/up rows and the matching down-
                projection columns of its least useful neurons, which is exactly the original with
                those neurons zeroed. Ranked by `NEURON_SCORES`: width (RMS of w·a_j x ||W2[:, j]||₂)
                or random. One width for every expert of every layer (experts are stacked
                [E, 2I, D]), rounded to a multiple of 8 (`kept_width`).

The physics (README "Pruning"; LExI, arXiv 2509.02753): a batch-1 decode step reads K experts
per layer whatever E is, so dropping experts does not lower its bytes; only once a batch touches
every expert (OLMoE: from bs ~32) do the bytes fall by the dropped fraction. Narrower experts lower
the bytes at every batch size, and so does reading fewer experts per token (--skip-threshold).

Per-layer counts: `uniform` drops round(R·E) experts in every layer; `global` ranks all experts of
all layers together (each layer's scores divided by their mean, so layers compare) and keeps at least
K per layer: uneven layers, which minimoe loads from the tensors (ModelConfig.experts_per_layer).
Group-limited routers (DeepSeek-V2/V3) drop the same number from every group, so each group keeps
its members and `n_group` still divides E; anything else is refused with the reason.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from .calibrate import HIST_BINS, Calibration, moe_layers
from .config import ModelConfig

KINDS = ("inter", "intra")
WIDTH_ALIGN = 8
PER_LAYER = ("uniform", "global")


def _reap(st: dict, gen) -> torch.Tensor:
    return st["reap"] / st["count"].clamp_min(1)          # never routed: saliency 0, dropped first


EXPERT_SCORES = {        # layer statistics -> [E] float64, higher = keep
    "frequency": lambda st, gen: st["count"].double(),
    "gate": lambda st, gen: st["gate"].double(),
    "reap": _reap,
    "random": lambda st, gen: torch.rand(st["count"].shape, generator=gen, dtype=torch.float64),
}


def _width_scores(st: dict, w13: torch.Tensor, w2: torch.Tensor, gen) -> torch.Tensor:
    """[E, I]: RMS of w·a_j over the tokens routed to the expert x ||W2[:, j]||₂ (the RMS of neuron j's
    share of the output; measured better than the mean |w·a_j| on mixtral-stdlib: +8.1% against +10.0%
    bits per byte at 25%); for an expert calibration never reached, ||Wg_j||·||Wu_j|| stands in."""
    I = w2.shape[2]
    col = w2.float().norm(dim=1).double()                                   # [E, I]
    count = st["count"][:, None]
    act = (st["act"] / count.clamp_min(1)).sqrt()
    weights_only = (w13[:, :I].float().norm(dim=-1) * w13[:, I:].float().norm(dim=-1)).double()
    return torch.where(count > 0, act, weights_only) * col


NEURON_SCORES = {        # (layer statistics, w13 [E, 2I, D], w2 [E, D, I]) -> [E, I], higher = keep
    "width": _width_scores,
    "random": lambda st, w13, w2, gen: torch.rand(w2.shape[0], w2.shape[2], generator=gen, dtype=torch.float64),
}
METHODS = {"inter": tuple(EXPERT_SCORES), "intra": tuple(NEURON_SCORES)}
NEEDS_NO_CALIBRATION = ("random",)


def n_dropped(ratio: float, n: int) -> int:
    """round(ratio * n), halves up (60 experts at 12.5% -> 8)."""
    return int(math.floor(ratio * n + 0.5))


def kept_width(ratio: float, I: int) -> int:
    """The width an expert keeps: I - round(ratio·I), rounded to a multiple of WIDTH_ALIGN when I is one
    (16 bytes of bf16: grouped GEMMs need 16-byte strides, vectorized loads want them; 224 at 12.5% keeps
    200, not 196). ValueError when nothing, or everything, would go."""
    keep = I - n_dropped(ratio, I)
    if I % WIDTH_ALIGN == 0:
        keep = WIDTH_ALIGN * math.floor(keep / WIDTH_ALIGN + 0.5)
    if not 1 <= keep < I:
        raise ValueError(f"pruning {ratio:g} of an expert's width {I} keeps {keep} neurons: need between 1 and "
                         f"{I - 1}" + (f" (widths are multiples of {WIDTH_ALIGN})" if I % WIDTH_ALIGN == 0 else ""))
    return keep


def _seeded(seed: int, layer: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + layer)


# ---- which experts stay -------------------------------------------------------------------------------

def _min_group(cfg: ModelConfig) -> int:
    """Experts a group must keep: V3 ranks groups by the sum of their best two."""
    return 2 if cfg.router == "sigmoid_group_bias" else 1


def _group_fits(cfg: ModelConfig, E: int, n: int, k: int) -> bool:
    """Dropping n of E experts keeps group-limited routing: equal groups, each big enough, K reachable."""
    size = (E - n) // cfg.n_group
    return n % cfg.n_group == 0 and size >= _min_group(cfg) and k <= cfg.topk_group * size


def check_expert_counts(cfg: ModelConfig, counts: dict, ratio: float, per_layer: str, k: int) -> dict:
    """{MoE layer: E} -> {layer: experts dropped} for `uniform`; the total for `global` ({-1: n}).
    Raises ValueError naming the constraint a ratio breaks (nothing removed, fewer than K left, groups)."""
    grouped = cfg.n_group > 1
    if per_layer == "global":
        if grouped:
            raise ValueError(f"--per-layer global cannot keep group-limited routing's equal groups "
                             f"(n_group {cfg.n_group}); use --per-layer uniform")
        total = n_dropped(ratio, sum(counts.values()))
        room = sum(E - k for E in counts.values())
        if not 1 <= total <= room:
            raise ValueError(f"pruning {ratio:g} of {sum(counts.values())} experts drops {total}: need between 1 "
                             f"and {room} (every layer keeps at least K={k})")
        return {-1: total}
    out = {}
    for layer, E in counts.items():
        n = n_dropped(ratio, E)
        if n < 1 or E - n < k:
            raise ValueError(f"pruning {ratio:g} of layer {layer}'s {E} experts drops {n}: need at least 1 "
                             f"and at least K={k} left")
        if grouped and not _group_fits(cfg, E, n, k):
            ok = [f"{g * cfg.n_group / E:g}" for g in range(1, E // cfg.n_group)
                  if _group_fits(cfg, E, g * cfg.n_group, k)]
            raise ValueError(f"pruning {ratio:g} of {E} experts drops {n}, but group-limited routing needs the "
                             f"same number from each of its {cfg.n_group} groups, at least {_min_group(cfg)} left "
                             f"per group and K={k} within {cfg.topk_group} groups; ratios that work here: "
                             f"{', '.join(ok) or 'none'}")
        out[layer] = n
    return out


def choose_experts(cfg: ModelConfig, scores: dict, ratio: float, per_layer: str, k: int) -> dict:
    """{MoE layer: scores [E]} -> {layer: kept local expert ids, ascending LongTensor}."""
    counts = {l: s.numel() for l, s in scores.items()}
    drops = check_expert_counts(cfg, counts, ratio, per_layer, k)
    if per_layer == "global":
        drops = _global_drops(scores, drops[-1], k)
    keep = {}
    for l, s in scores.items():
        if cfg.n_group > 1:      # the lowest n/n_group of every group
            g = s.view(cfg.n_group, -1)
            order = g.argsort(dim=1, stable=True)[:, drops[l] // cfg.n_group:]
            kept = (order + torch.arange(cfg.n_group)[:, None] * g.shape[1]).reshape(-1)
        else:
            kept = s.argsort(stable=True)[drops[l]:]
        keep[l] = kept.sort().values
    return keep


def _global_drops(scores: dict, total: int, k: int) -> dict:
    """How many experts each layer loses when all layers are ranked together (scores / layer mean)."""
    flat = [(float(v) / (float(s.mean()) or 1.0), l) for l, s in scores.items() for v in s]
    drops = dict.fromkeys(scores, 0)
    for _, l in sorted(flat, key=lambda t: t[0]):
        if sum(drops.values()) == total:
            break
        if scores[l].numel() - drops[l] > k:
            drops[l] += 1
    return drops


# ---- slicing ------------------------------------------------------------------------------------------

def _own(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)


def _plain_experts(moe, layer: int):
    ex = moe.experts
    if ex.fmt != "none" or ex.expert_offset != 0 or ex.n_local != moe.router.n_experts:
        raise ValueError(f"layer {layer}: prune a whole, unquantized model (this one holds {ex.fmt} experts "
                         f"{ex.expert_offset}..{ex.expert_offset + ex.n_local - 1}); quantize or shard afterwards")
    return ex


def drop_experts_(model, keep: dict) -> None:
    """Keep only experts keep[layer] (local ids) of each layer: weights, router rows, selection bias."""
    for layer, kept in keep.items():
        moe = model.layers[layer].ffn
        ex, router = _plain_experts(moe, layer), moe.router
        kept = kept.to(ex.w13.device)
        ex.w13, ex.w2 = _own(ex.w13.data[kept]), _own(ex.w2.data[kept])         # [E', 2I, D], [E', D, I]
        router.weight = _own(router.weight.data[kept])                          # [E', D]
        if router.bias is not None:
            router.bias = _own(router.bias.data[kept])                          # [E'] (DeepSeek-V3)


def narrow_(experts, kept: torch.Tensor) -> None:
    """Keep only neurons kept [E, I'] (ascending) of each expert: its gate and up rows, its down columns."""
    I, D = experts.hidden, experts.w13.shape[2]
    kept = kept.to(experts.w13.device)
    rows = torch.cat([kept, kept + I], dim=1)                                  # [E, 2I'] gate rows, up rows
    experts.w13 = _own(experts.w13.data.gather(1, rows[..., None].expand(-1, -1, D)))
    experts.w2 = _own(experts.w2.data.gather(2, kept[:, None, :].expand(-1, D, -1)))   # [E, D, I']


def narrow_experts_(model, keep: dict) -> None:
    """narrow_ every expert of each layer in keep {layer: [E, I']}."""
    for layer, kept in keep.items():
        narrow_(_plain_experts(model.layers[layer].ffn, layer), kept)


def pruned_config(cfg: ModelConfig, model) -> ModelConfig:
    """The config that describes the model's experts now: uniform counts/widths in n_experts and
    moe_intermediate_size, uneven ones per layer (and n_experts = the largest)."""
    moe = dict(moe_layers(model))
    E = tuple(moe[i].experts.n_local if i in moe else cfg.layer_experts(i) for i in range(cfg.n_layers))
    I = tuple(moe[i].experts.hidden if i in moe else cfg.layer_moe_width(i) for i in range(cfg.n_layers))
    Es, Is = {E[i] for i in moe}, {I[i] for i in moe}
    return dataclasses.replace(cfg, n_experts=max(Es), moe_intermediate_size=max(Is),
                               experts_per_layer=E if len(Es) > 1 else None,
                               moe_width_per_layer=I if len(Is) > 1 else None)


def _set_config(model, old: ModelConfig, new: ModelConfig) -> None:
    for m in model.modules():
        if getattr(m, "cfg", None) is old:
            m.cfg = new


def prune_(model, calib: Calibration | None, kind: str, method: str, ratio: float, per_layer: str = "uniform",
           seed: int = 0, top_k: int | None = None) -> dict:
    """Prune a built model in place. Returns {"cfg": the new ModelConfig, "kept": {layer: kept original
    expert ids} (inter) or {layer: width} (intra)}. top_k: the K the model will run with (default the
    config's). ValueError (one line) for a bad kind/method/ratio or a ratio the routing cannot take."""
    cfg = model.cfg
    if kind not in KINDS or method not in METHODS[kind]:
        raise ValueError(f"pruning {kind!r} by {method!r}: choose inter by {' | '.join(METHODS['inter'])}, "
                         f"or intra by {' | '.join(METHODS['intra'])}")
    if not 0 < ratio < 1:
        raise ValueError(f"the pruning ratio must be between 0 and 1 (a fraction), got {ratio:g}")
    if calib is None and method not in NEEDS_NO_CALIBRATION:
        raise ValueError(f"pruning by {method} needs calibration statistics")
    if calib is not None:
        calib.check_matches(model)
    layers = moe_layers(model)
    stats = {l: (calib.layers[l] if calib is not None else {"count": torch.zeros(m.experts.n_local)})
             for l, m in layers}
    if kind == "inter":
        scores = {l: EXPERT_SCORES[method]({k: v.cpu() for k, v in stats[l].items()}, _seeded(seed, l))
                  for l, _ in layers}
        keep = choose_experts(cfg, scores, ratio, per_layer, max(top_k or 0, cfg.top_k))
        drop_experts_(model, keep)
        kept = {l: v.tolist() for l, v in keep.items()}
    else:
        if per_layer != "uniform":
            raise ValueError("intra-expert pruning keeps one width in every layer (transformers and the "
                             "roofline assume it): use --per-layer uniform")
        keep = {l: _choose_neurons(m.experts, stats[l], method, ratio, _seeded(seed, l)) for l, m in layers}
        narrow_experts_(model, keep)
        kept = {l: v.shape[1] for l, v in keep.items()}
    new = pruned_config(cfg, model)
    _set_config(model, cfg, new)
    return {"cfg": new, "kept": kept}


def _choose_neurons(experts, st: dict, method: str, ratio: float, gen) -> torch.Tensor:
    """[E, I'] kept neuron ids per expert (ascending), the same count I' = kept_width(ratio, I) for all.
    Scored where the weights live (statistics moved there; random draws made on the CPU, seeded)."""
    keep = kept_width(ratio, experts.hidden)
    w13, w2 = experts.stacked()
    scores = NEURON_SCORES[method]({k: v.to(w2.device) for k, v in st.items()}, w13, w2, gen)
    return scores.to(w2.device).argsort(dim=1, stable=True)[:, experts.hidden - keep:].sort(dim=1).values


# ---- dynamic skipping ---------------------------------------------------------------------------------

def skip_threshold_for(calib: Calibration, fraction: float) -> tuple[float, float]:
    """The --skip-threshold beta that drops about `fraction` of the routed slots on the calibration
    tokens, and the fraction it drops there (slot ratio w / top w, pooled over layers)."""
    hist = sum(st["ratio_hist"].double().cpu() for st in calib.layers.values())        # [HIST_BINS]
    below = hist.cumsum(0) / hist.sum()                # below[b]: share of slots with ratio < (b+1)/BINS
    b = int((below < fraction).sum())
    b = min(b, HIST_BINS - 2)                          # the top slot (ratio 1) is never dropped
    return (b + 1) / HIST_BINS, float(below[b])


def active_bytes(model, top_k: int | None = None) -> dict:
    """Weight bytes in all, and what one token reads: everything but the routed experts, plus K of
    them per MoE layer (the embedding counts one row). The bs-1 decode floor is the second."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    k = top_k or model.cfg.top_k
    experts = per_token = 0
    for _, moe in moe_layers(model):
        ex = moe.experts
        size = sum(p.numel() * p.element_size() for p in (ex.w13, ex.w2))
        experts += size
        per_token += size // ex.n_local * min(k, ex.n_local)
    emb = model.embed.weight
    unread = 0 if model.cfg.tie_word_embeddings else (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    dense = total - experts - unread
    return {"total": total, "routed_experts": experts, "per_token": dense + per_token}
