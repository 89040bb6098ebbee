"""CUDA graphs for the decode step: launch the whole step with one call.

At decode sizes an MoE layer is ~10-20 small kernels, and a 16-48 layer model launches hundreds per
token; at a few microseconds each, launch overhead alone can exceed the time the GPU needs to stream
the weights. A CUDA graph records the step's kernels once and replays them with a single launch.
That needs a step with static shapes and addresses and no host syncs: the static KV cache with
device-side lengths (kv_cache.py), the masked or length-aware decode attention, a sync-free expert
path (grouped or fused; the loop path syncs per expert and cannot be captured) and on-device
sampling. Inputs are copied into a static tensor before each replay; the output tensor is the
graph's own and is copied out.

Why plain `torch.cuda.CUDAGraph` rather than `torch.compile(mode="reduce-overhead")`: capture takes
milliseconds instead of a compile of minutes, the captured kernels are exactly the eager ones
(Triton kernels included) so eager stays the oracle, and nothing is fused behind our back, which
keeps every ablation honest. One graph per generator, i.e. per batch size bucket.
"""
from __future__ import annotations

import torch


class DecodeGraph:
    def __init__(self, gen, warmup: int = 2):
        """Capture `gen.eager_step(tokens, host_len=None)` for the generator's batch."""
        self.gen = gen
        self.tokens = torch.zeros(gen.batch, dtype=torch.long, device=gen.device)   # static input [B]
        saved = gen.cache.lengths.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():   # warm-up: allocations, autotuning
            for _ in range(warmup):
                gen.eager_step(self.tokens, None)
                gen.cache.lengths.copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = gen.eager_step(self.tokens, None)                           # static output [B]
        gen.cache.lengths.copy_(saved)   # capture ran the step once more: undo its length update
        torch.cuda.synchronize()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.out.clone()


def graph_safe(expert_path: str) -> bool:
    """Expert paths that make no host sync (the loop path syncs once per expert)."""
    return expert_path in ("grouped", "fused")


def enable_graphs(gen) -> None:
    """Capture the decode step of `gen` (a Generator on a CUDA device) and use it from now on."""
    if gen.device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA GPU")
    if not graph_safe(gen.model.settings.experts) and gen.model.cfg.is_moe:
        raise ValueError(f"CUDA graphs need a sync-free expert path (grouped or fused), "
                         f"not {gen.model.settings.experts!r}")
    gen.graphs = DecodeGraph(gen)
