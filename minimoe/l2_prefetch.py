"""An L2 prefetch plan for small-batch decode: a side stream asks the L2 for the attention weights ahead of use.

At batch 1 the HBM is idle while the step runs its latency-bound kernels (norms, attention over a short cache,
the router), and each dense GEMV pays its own ramp and tail. The attention weights do not depend on the token,
so they can be fetched before the kernel that reads them is reached:

    layer i:  norm -> [attn pre-hook] q/k/v -> attention -> o -> router -> [ffn pre-hook] experts
    "o"    at layer i's attn pre-hook: layer i's o projection (read after the attention kernels)
    "next" at layer i's ffn pre-hook:  layer i+1's other attention weights (read after this layer's experts)

Each prefetch is one launch of kernels/l2_prefetch.py on a side stream that first waits for the main stream
(so it starts where the hook fired) and is joined back at the final norm (so a CUDA graph capture closes). The
prefetched lines compete with the experts' loads, which are evict_first. Nothing here changes a value: a
prefetch is a hint, and the tokens are the same with MODE "off" (checked by scripts/step_probe.py).

A plan in the style of the parallel plans: `install(model)` adds forward pre-hooks and the single-GPU modules
stay as they are. MODE ("off" | "o" | "next" | "both"), MAX_T (the largest token count a step prefetches for),
EVICT_LAST and CHUNK_BYTES are read at every call (scripts/step_probe.py's variants set them); the hooks do
nothing off an sm90+ CUDA device. Tables of byte ranges are built at install, from the weights' addresses then:
install after loading (and after any re-layout such as MLA's joined projections).
"""
from __future__ import annotations

import torch

from .kernels.l2_prefetch import chunk_table, l2_prefetch

MODE = "off"
MAX_T = 1
EVICT_LAST = False
CHUNK_BYTES = 16384


def _tensors(module, keep) -> list[torch.Tensor]:
    """The plain (unquantized) parameters of `module` whose names pass `keep`."""
    return [p for name, p in module.named_parameters() if keep(name) and isinstance(p, torch.Tensor)
            and p.is_cuda and p.is_contiguous()]


class _Plan:
    def __init__(self, model):
        self.stream = None
        self.pending = False
        self.tables: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for i, block in enumerate(model.layers):
            for kind, keep in (("o", lambda n: n.startswith("wo.")), ("in", lambda n: not n.startswith("wo."))):
                ts = _tensors(block.attn, keep)
                if ts:
                    self.tables[(kind, i)] = ts

    def table(self, kind: str, layer: int):
        """(addr, size) for this layer's weights of this kind at the current CHUNK_BYTES (built once per size)."""
        key = (kind, layer, CHUNK_BYTES)
        if key not in self.tables:
            ts = self.tables.get((kind, layer))
            if ts is None:
                return None
            self.tables[key] = chunk_table(ts, CHUNK_BYTES, ts[0].device)
        return self.tables[key]

    def issue(self, kind: str, layer: int) -> None:
        tab = self.table(kind, layer)
        if tab is None:
            return
        main = torch.cuda.current_stream()
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            l2_prefetch(*tab, evict_last=EVICT_LAST)
        self.pending = True

    def join(self) -> None:
        if self.pending:
            torch.cuda.current_stream().wait_stream(self.stream)
            self.pending = False


def _tokens(x) -> int:
    return x.numel() // x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() else 0


def _active(x) -> bool:
    return (MODE != "off" and isinstance(x, torch.Tensor) and x.is_cuda and _tokens(x) <= MAX_T
            and torch.cuda.get_device_capability(x.device)[0] >= 9)


def install(model) -> _Plan:
    """Add the plan's hooks to a built, loaded model (a Transformer with `layers`, each with attn and ffn, and a
    final `norm`); returns the plan (its tables, for tests). Hooks: at layer i's attention, the o projection of
    layer i (MODE "o" / "both"); at layer i's FFN, layer i+1's other attention weights ("next" / "both"); at the
    final norm, the side stream joined back."""
    plan = _Plan(model)
    n = len(model.layers)

    def at_attn(i):
        def hook(module, args):
            if MODE in ("o", "both") and _active(args[0]):
                plan.issue("o", i)
        return hook

    def at_ffn(i):
        def hook(module, args):
            if MODE in ("next", "both") and i + 1 < n and _active(args[0]):
                plan.issue("in", i + 1)
        return hook

    for i, block in enumerate(model.layers):
        block.attn.register_forward_pre_hook(at_attn(i))
        block.ffn.register_forward_pre_hook(at_ffn(i))
    model.norm.register_forward_pre_hook(lambda module, args: plan.join())
    return plan
