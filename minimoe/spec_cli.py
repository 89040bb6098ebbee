"""The draft model from the run settings, and `python -m minimoe generate --draft MODEL --gamma G`.

The draft runs with the target's machinery (device, dtype, attention, small ops, graphs, the expert
path when it is an MoE) but none of the target's model overrides (router, top-k, expert skipping,
quantization, parallel plans): those describe the target. runtime.py checks the draft before any
weight is loaded (it resolves, shares the vocabulary); here it is built and the generation is run
(speculative.py), with --gamma auto chosen by spec_cost.py from step times measured on this machine.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from . import spec_cost
from .config import ModelConfig
from .graphs import graph_safe
from .loader import CheckpointError, build_model, read_config
from .sampling import Sampling
from .settings import RunSettings
from .speculative import SpeculativeGenerator


def draft_config(s: RunSettings) -> tuple[ModelConfig, RunSettings]:
    """The draft's ModelConfig and the settings it runs with: the target's machinery (device, dtype,
    attention, ops, graphs, expert path for an MoE draft) without the target's model overrides
    (router, top-k, skipping, quantization, parallel plans). Raises CheckpointError (a ValueError)."""
    cfg, _ = read_config(s.draft)
    ds = dataclasses.replace(s, experts=s.experts if cfg.is_moe else "loop", router=None, top_k=None,
                             skip_threshold=0.0, quant="none", quant_lm_head=False, ep=1, tp=1,
                             dispatch="allgather", allreduce="nccl", draft=None,
                             draft_weights="auto", gamma="0", draft_accept=None)
    return cfg, ds


def load_draft(s: RunSettings):
    """--draft/--draft-weights -> (draft Transformer on s.device, its ModelConfig). Dummy weights take
    seed s.seed + 1, so a draft of the target's own card is not the target itself."""
    cfg, ds = draft_config(s)
    try:
        model, cfg, _ = build_model(s.draft, s.draft_weights, dtype=s.torch_dtype, device=s.device, settings=ds,
                                    seed=s.seed + 1)
    except CheckpointError as e:                      # say which checkpoint: the target's loaded fine
        flag = f"--draft {s.draft}" if s.draft_weights in ("auto", "dummy") else f"--draft-weights {s.draft_weights}"
        raise CheckpointError(f"{flag}: {e}") from None
    return model, cfg


def positions_needed(gamma: str, longest_prompt: int, n_new: int) -> int:
    """Cache positions `generate --draft` needs for --gamma (an int, or auto: up to the largest G it tries)."""
    G = max(spec_cost.AUTO_GAMMAS) if gamma == "auto" else int(gamma)
    return SpeculativeGenerator.positions(longest_prompt, n_new, G)


def generate_cli(model, s: RunSettings, prompts: list, n_new: int, sampling: Sampling, stop_ids=()):
    """`python -m minimoe generate --draft ...` -> (new tokens [B, N], seconds of the generation alone,
    a JSON-ready dict whose "summary" line says G, the acceptance and whether it was synthetic)."""
    auto = s.gamma == "auto"
    gammas = spec_cost.AUTO_GAMMAS if auto else (int(s.gamma),)
    dcfg, _ = draft_config(s)
    need = positions_needed(s.gamma, max(map(len, prompts)), n_new)
    if need > dcfg.max_position_embeddings:
        raise ValueError(f"--draft {s.draft}: {need} positions exceed its max_position_embeddings "
                         f"{dcfg.max_position_embeddings}")
    if s.draft_accept is not None and not sampling.greedy:
        raise ValueError("--draft-accept needs greedy decoding: the proposals are the plain greedy run's tokens")
    draft, _ = load_draft(s)
    spec = SpeculativeGenerator(model, draft, len(prompts), need, max(gammas), sampling, s.draft_accept, s.seed)
    if s.use_graphs and all(graph_safe(s.experts) or not m.cfg.is_moe for m in (model, draft)):
        spec.enable_graphs(gammas)
    reference = None if s.draft_accept is None else spec.target.generate(prompts, n_new)   # the plain run
    info = {"draft": s.draft, "graphs": spec.graphed}
    G = gammas[0]
    if auto:
        G, info["auto"] = spec_cost.auto_gamma(spec, prompts, n_new, s.draft_accept, gammas)
    t0 = time.perf_counter()
    if G == 0:
        new = spec.target.generate(prompts, n_new, stop_ids)
    else:
        spec.gamma = G
        new = spec.generate(prompts, n_new, stop_ids, reference)
    if spec.target.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info.update(spec.stats() if G else {"gamma": 0})
    how = "auto" if auto else "fixed"
    if G == 0:
        info["summary"] = f"speculative decoding off: --gamma auto predicted no gain with draft {s.draft}"
    else:
        kind = (f"synthetic: --draft-accept {s.draft_accept} makes each proposal the plain greedy run's token with "
                f"that chance" if s.draft_accept is not None else "real")
        info["summary"] = (f"speculative decoding: draft {s.draft}, G={G} ({how}), acceptance rate "
                           f"{info['acceptance_rate']:.2f} (kept / proposed: a round keeps its proposals up to the "
                           f"first miss), per-proposal alpha {info['alpha']:.2f} ({kind}), "
                           f"{info['tokens_per_target_forward']:.2f} tokens per target forward")
    return new, seconds, info
