"""The benchmark under torchrun: every rank runs the same configurations, rank 0 reports.

With --ep / --tp the model carries its `ParallelPlan` (parallel.py). Under expert parallelism each
rank decodes its own rows of the batch (`local_prompts`); the batch size, tokens/s and the table stay
global, and every rank steps in lockstep, so rank 0's CUDA-event times are the run's. The roofline of
a plan is the single-GPU bytes and FLOPs over the ceilings of all its GPUs together: a lower bound
(replicated attention weights are read on every EP rank), so a plan can never look better than
physics allows. The expert-load counters are summed over ranks, and the load per EP rank (the tokens
its experts received) is reported beside the imbalance.
"""
from __future__ import annotations

import os
import sys

from ..parallel import rank
from ..runtime import UsageError


def plan_of(model):
    return getattr(model, "plan", None)


def local_prompts(model, prompts: list) -> list:
    """The rows of a global batch this rank decodes (all of them without a plan)."""
    plan = plan_of(model)
    return prompts if plan is None else [prompts[i] for i in plan.local_rows(len(prompts))]


def check(s, ragged: bool, compare: bool) -> None:
    """What a plan cannot run, refused before the model is built."""
    if s.ep * s.tp == 1:
        return
    if compare:
        raise UsageError("--compare transformers runs one GPU; it cannot join --ep / --tp")
    if ragged and s.ep > 1 and s.dispatch != "alltoall":
        raise UsageError(f"--dispatch {s.dispatch} needs every EP rank to step the same token count; ragged "
                         "prompts under --ep need --dispatch alltoall" + (" and --eager (its host sync per layer "
                                                                          "cannot be graphed)" if s.use_graphs else ""))


def quiet_unless_rank0(args) -> None:
    """Ranks other than 0 print nothing on stdout (errors still reach stderr) and write no JSON or plot;
    they still run every measurement (each one's collectives need every rank)."""
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")
        args.json = args.plot = None


def aggregate_ceilings(ceilings: dict, s) -> dict:
    """The roofline of a plan: bandwidth and matmul peak of all its GPUs together."""
    n = s.ep * s.tp
    if n == 1:
        return ceilings
    return {**ceilings, "bandwidth_GBps": n * ceilings["bandwidth_GBps"], "matmul_TFLOPs": n * ceilings["matmul_TFLOPs"],
            "note": f"x{n} GPUs (a lower bound for the plan's step)"}


def load_summary(model, load) -> dict:
    """ExpertLoad summary over the whole batch; under EP also the tokens each rank's experts received."""
    plan = plan_of(model)
    if plan is not None:
        plan.reduce_load(load.counts)
    out = load.summary()
    if plan is not None and plan.bounds:
        per_rank = plan.rank_load(load.counts)                 # [MoE layer][EP rank]
        totals = [sum(col) for col in zip(*per_rank)]
        out["tokens_per_rank"] = per_rank
        out["rank_imbalance"] = max(totals) / max(1e-9, sum(totals) / len(totals))
        print(f"# expert load per EP rank (tokens routed, all MoE layers): {totals}; "
              f"max/mean {out['rank_imbalance']:.2f}")
    return out


def heatmap(model, load, path: str) -> None:
    """The expert-load PNG, written once (rank 0), EP ranks' experts marked."""
    plan = plan_of(model)
    if rank() == 0:
        load.heatmap(path, next(iter(plan.bounds.values()), None) if plan is not None else None)
        print(f"# expert-load heatmap written to {path}", file=sys.stderr)
