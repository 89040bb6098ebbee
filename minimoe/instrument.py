"""Instrumentation: named timing regions and expert-load counters, free when switched off.

The model's parts open regions from a fixed vocabulary (`REGIONS`) with `with region("experts"):`.
With no profiler active, `region` returns one shared do-nothing context: no events, no syncs, no
allocation. With a profiler active, each region records a pair of CUDA events on the current stream
(or reads `time.perf_counter` on the CPU, where work is synchronous); the events are only read, with
one synchronisation, when `totals()` is asked for, so profiling does not serialise the GPU.
A region opened inside another pauses the outer one (a tensor-parallel all-reduce inside
"attention"), so no time counts twice and their sum is the profiled part of the step.

`ExpertLoad` counts tokens per (layer, expert) on the device with `scatter_add_` (`bincount` would
sync with the host) and reports imbalance = max / mean tokens per expert.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

REGIONS = ("embed", "attention", "norm", "router", "dispatch", "permute", "experts", "unpermute", "combine",
           "shared", "dense", "lm_head", "sample", "all_to_all", "all_reduce")   # dense = a non-MoE layer's FFN
# dispatch / combine: expert parallelism's token exchanges (dispatch.py); permute / unpermute: the grouped
# path's local sort of token-expert pairs and its weighted sum back (experts.py)

_NULL = contextlib.nullcontext()
_active: "Profiler | None" = None
_load: "ExpertLoad | None" = None


class Profiler:
    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.pending = []                    # (name, start, end) events not yet read
        self.ms = defaultdict(float)
        self.calls = defaultdict(int)
        self.notes = {}                      # e.g. which fused-MoE variant ran
        self.open = []                       # regions entered and not left, innermost last

    def region(self, name: str):
        if name not in REGIONS:
            raise KeyError(f"unknown region {name!r}; regions are {REGIONS}")
        return _Timed(self, name)

    def note(self, key: str, value: str) -> None:
        self.notes[key] = value

    def totals(self) -> dict:
        """{region: {ms, calls, pct}} over everything recorded so far (synchronises once)."""
        if self.pending:
            torch.cuda.synchronize()
            for name, start, end in self.pending:
                self.ms[name] += start.elapsed_time(end)
            self.pending.clear()
        total = sum(self.ms.values()) or 1.0
        return {n: {"ms": self.ms[n], "calls": self.calls[n], "pct": 100.0 * self.ms[n] / total}
                for n in REGIONS if n in self.ms}

    def reset(self) -> None:
        self.pending.clear()
        self.ms.clear()
        self.calls.clear()


class _Timed:
    """One region's span: CUDA events on the current stream, or the host clock on a CPU."""
    __slots__ = ("prof", "name", "start")

    def __init__(self, prof: Profiler, name: str):
        self.prof, self.name = prof, name

    def __enter__(self):
        if self.prof.open:
            self.prof.open[-1]._stop()           # the outer region pauses while this one runs
        self.prof.open.append(self)
        self._start()

    def __exit__(self, *exc):
        p = self.prof
        self._stop()
        p.open.pop()
        p.calls[self.name] += 1
        if p.open:
            p.open[-1]._start()
        return False

    def _start(self):
        if self.prof.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()

    def _stop(self):
        p = self.prof
        if p.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            p.pending.append((self.name, self.start, end))
        else:
            p.ms[self.name] += (time.perf_counter() - self.start) * 1e3


def region(name: str | None):
    """A timing region if a profiler is active (and name is not None), else a shared no-op context."""
    return _NULL if _active is None or name is None else _active.region(name)


def note(key: str, value: str) -> None:
    if _active is not None:
        _active.note(key, value)


@contextlib.contextmanager
def profiling(profiler: "Profiler | None" = None, load: "ExpertLoad | None" = None):
    """Activate a profiler and/or expert-load counter for the enclosed code."""
    global _active, _load
    saved = _active, _load
    _active, _load = profiler, load
    try:
        yield profiler
    finally:
        _active, _load = saved


class ExpertLoad:
    """Tokens routed per (layer, expert) while active (`profiling(load=...)`). experts_per_layer: each layer's own
    expert count when they differ (a globally ranked pruning; columns past it stay 0 and count nowhere)."""

    def __init__(self, n_layers: int, n_experts: int, device, experts_per_layer=None):
        self.counts = torch.zeros(n_layers, n_experts, dtype=torch.int64, device=device)  # [L, E]
        self.experts = [min(e, n_experts) if e else n_experts for e in (experts_per_layer or [n_experts] * n_layers)]
        self.mask = None        # [T] bool, optional: the tokens of the next forwards to count (eval's overlapping
        #                         windows count each token once); None counts every token

    @classmethod
    def of(cls, cfg, device) -> "ExpertLoad":
        """Sized for a model config: E = its widest layer, each layer's own count kept for the imbalance."""
        per_layer = [cfg.layer_experts(i) if cfg.is_moe_layer(i) else 0 for i in range(cfg.n_layers)]
        return cls(cfg.n_layers, max(per_layer + [1]), device, per_layer)

    def record(self, layer: int, ids: torch.Tensor) -> None:
        """ids [T, K] global expert ids; -1 (a skipped slot) counts nowhere, nor does a token whose `mask` entry is
        False. Raises ValueError if a mask is set for another number of tokens."""
        keep = ids >= 0                                                          # [T, K]
        if self.mask is not None:
            if self.mask.shape != ids.shape[:1]:
                raise ValueError(f"ExpertLoad.mask holds {self.mask.numel()} tokens, the router saw {ids.shape[0]}")
            keep &= self.mask[:, None]
        self.counts[layer].scatter_add_(0, ids.reshape(-1).clamp_min(0), keep.reshape(-1).long())

    def summary(self) -> dict:
        """Imbalance = max / mean tokens per expert over the layer's own experts, for layers that routed anything
        (MoE layers)."""
        c = self.counts.double()
        routed = c.sum(1) > 0
        n = torch.tensor(self.experts, dtype=torch.float64, device=c.device)                  # [L]
        per_layer = torch.where(routed, c.amax(1) / (c.sum(1) / n).clamp_min(1e-9), torch.nan)
        moe = per_layer[routed]
        return {"tokens_per_expert": self.counts.tolist(),
                "imbalance_per_layer": [None if v != v else v for v in per_layer.tolist()],
                "imbalance_max": float(moe.max()) if moe.numel() else None,
                "imbalance_mean": float(moe.mean()) if moe.numel() else None}

    def heatmap(self, path: str, rank_bounds: list | None = None, title: str = "tokens routed per expert") -> None:
        """PNG of tokens per (layer, expert); rank_bounds [0, ..., E]: expert parallelism's ranks, marked
        with lines and their token totals in the title."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise SystemExit("the expert-load heatmap needs matplotlib: pip install 'minimoe[plot]'") from e
        from matplotlib.ticker import MaxNLocator
        fig, ax = plt.subplots(figsize=(10, 4))
        shown = self.counts.double().cpu()
        for i, e in enumerate(self.experts):                 # experts a pruned layer does not have: blank
            shown[i, e:] = float("nan")
        im = ax.imshow(shown.numpy(), aspect="auto", cmap="viridis")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        if rank_bounds:
            for b in rank_bounds[1:-1]:
                ax.axvline(b - 0.5, color="white", linewidth=2)
            totals = [int(self.counts[:, a:b].sum()) for a, b in zip(rank_bounds, rank_bounds[1:])]
            ax.set_title(f"{title}; per EP rank {totals}")
        fig.colorbar(im, ax=ax)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)


def record_load(layer: int, ids: torch.Tensor) -> None:
    if _load is not None:
        _load.record(layer, ids)
