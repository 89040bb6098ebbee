"""Expert-parallel dispatch and combine: send each token to the ranks that hold its experts, and back.

Under expert parallelism each rank decodes its own rows of the batch and holds a contiguous range of
every MoE layer's experts. Between the router and the experts two exchanges cross the N ranks of the
expert-parallel group:
    dispatch   every rank receives the tokens routed to its experts, with their routing (ids, weights)
    combine    each token's partial outputs (the weighted sum of its experts on one rank) come back
               to its own rank and are added up
In between runs the plain single-GPU `Experts` module, any path, any weight format: a slot whose
global id is outside the rank's range (or -1) contributes exactly zero, so nothing in it knows about
ranks. `attach` puts the exchange on a module as a forward pre-hook (dispatch: replaces its inputs)
and a forward hook (combine: replaces its output), read at call time from `RunSettings.dispatch`:

  allgather  all-gather every rank's tokens, run the local experts on all N·T of them, reduce-scatter
             the outputs. Two collectives of static size, no host sync: CUDA-graph safe. N·T rows
             travel each way whatever the routing (vLLM's all-gather/reduce-scatter EP; Megatron's
             "allgather" token dispatcher).
  alltoall   each token goes once to each rank holding at least one of its K experts (deduplicated
             per rank). Counts are exchanged first, then one `all_to_all_single` each way with those
             sizes: only routed rows travel, but the sizes must reach the host, one sync per layer,
             so no CUDA graph (Megatron's "alltoall" dispatcher; DeepEP's normal mode).
  padded     the all-to-all at a fixed capacity: each rank sends every peer a buffer of T rows (the
             most it can need: all its tokens routed to that peer), its valid rows compacted to the
             front, empty rows marked with ids -1. Sizes depend only on the batch: no host sync,
             CUDA-graph safe (DeepEP low-latency's fixed buffers, here over NCCL, where the whole
             buffer travels; peer-to-peer stores would move only the valid rows).
A row travels packed as bytes, hidden [D] (model dtype) + weights [K] fp32 + ids [K] int32, so each
exchange is one collective. Combines add partial outputs in a fixed order (deterministic).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import collective

from .instrument import region


# ---- packing a token row: hidden, routing weights and ids as one byte row -------------------------

def pack(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [T, D], weights [T, K], ids [T, K] -> bytes [T, D·size + 8K] (D·size must be a multiple of 4)."""
    return torch.cat([x.contiguous().view(torch.uint8), weights.float().contiguous().view(torch.uint8),
                      ids.to(torch.int32).contiguous().view(torch.uint8)], dim=1)


def unpack(rows: torch.Tensor, D: int, K: int, dtype: torch.dtype):
    """The inverse of `pack`: bytes [R, P] -> (x [R, D], weights [R, K] fp32, ids [R, K] int64)."""
    nx = D * dtype.itemsize
    x = rows[:, :nx].view(dtype).contiguous()
    weights = rows[:, nx:nx + 4 * K].view(torch.float32).contiguous()
    ids = rows[:, nx + 4 * K:].view(torch.int32).long()
    return x, weights, ids


def empty_rows(n: int, D: int, K: int, dtype: torch.dtype, device) -> torch.Tensor:
    """n packed rows that route nowhere: zero hidden and weights, ids -1 (all bytes 0xFF)."""
    rows = torch.zeros(n, D * dtype.itemsize + 8 * K, dtype=torch.uint8, device=device)
    rows[:, D * dtype.itemsize + 4 * K:] = 255
    return rows


def owner_ranks(ids: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """ids [T, K] global (-1 = skipped) -> the EP rank holding each, N for a skipped slot."""
    n = bounds.numel() - 1
    rank = torch.bucketize(ids, bounds[1:], right=True)               # [T, K] in 0..N-1
    return torch.where(ids < 0, n, rank)


def rank_hits(ids: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """[T, N] bool: token t has at least one expert on rank r."""
    n = bounds.numel() - 1
    owners = owner_ranks(ids, bounds)
    hit = torch.zeros(ids.shape[0], n + 1, dtype=torch.bool, device=ids.device)
    return hit.scatter_(1, owners, True)[:, :n]


# ---- the three designs: dispatch(x, w, ids, ctx) -> (x, w, ids) to compute; combine(y, ctx) -> [T, D]

def dispatch_allgather(x, weights, ids, ctx):
    buf = pack(x, weights, ids)
    out = buf.new_empty(ctx.n * buf.shape[0], buf.shape[1])                      # [N·T, P]
    collective.run(dist.all_gather_into_tensor, out, buf, group=ctx.group)
    return unpack(out, x.shape[1], ids.shape[1], x.dtype)


def combine_allgather(y, ctx):
    out = y.new_empty(y.shape[0] // ctx.n, y.shape[1])                          # [T, D]
    collective.run(dist.reduce_scatter_tensor, out, y.contiguous(), group=ctx.group)   # sums the N partials
    return out


def dispatch_alltoall(x, weights, ids, ctx):
    hit = rank_hits(ids, ctx.bounds)                                             # [T, N]
    send_counts = hit.sum(0)                                                     # [N]
    recv_counts = torch.empty_like(send_counts)
    collective.run(dist.all_to_all_single, recv_counts, send_counts, group=ctx.group)
    rank_token = hit.t().nonzero()                 # [R, 2] (rank, token), rank-major; host sync (sizes)
    ctx.order = rank_token[:, 1]                                                 # [R] token of each sent row
    ctx.sent = send_counts.tolist()                # host sync: NCCL needs the split sizes on the host
    ctx.received = recv_counts.tolist()
    buf = pack(x[ctx.order], weights[ctx.order], ids[ctx.order])
    # nothing received still hands the experts one row that routes nowhere: no path sees an empty batch
    out = empty_rows(max(1, sum(ctx.received)), x.shape[1], ids.shape[1], x.dtype, x.device)
    collective.run(dist.all_to_all_single, out[:sum(ctx.received)], buf, ctx.received, ctx.sent, group=ctx.group)
    ctx.T = x.shape[0]
    return unpack(out, x.shape[1], ids.shape[1], x.dtype)


def combine_alltoall(y, ctx):
    back = y.new_empty(ctx.order.numel(), y.shape[1])                            # [R, D]
    collective.run(dist.all_to_all_single, back, y[:sum(ctx.received)].contiguous(), ctx.sent, ctx.received,
                   group=ctx.group)
    out = torch.zeros(ctx.T, y.shape[1], dtype=torch.float32, device=y.device)   # [T, D]
    start = 0
    for n in ctx.sent:             # one rank's rows at a time: tokens unique within it, so no atomics race
        out.index_add_(0, ctx.order[start:start + n], back[start:start + n].float())
        start += n
    return out.to(y.dtype)


def dispatch_padded(x, weights, ids, ctx):
    T, N = x.shape[0], ctx.n
    hit = rank_hits(ids, ctx.bounds)                                             # [T, N]
    slot = hit.long().cumsum(0) - 1                                              # [T, N] place in rank r's buffer
    ctx.hit, ctx.dest = hit, torch.where(hit, torch.arange(N, device=x.device) * T + slot, N * T)   # [T, N]
    send = empty_rows(N * T + 1, x.shape[1], ids.shape[1], x.dtype, x.device)   # + a scratch row at N·T
    send.index_copy_(0, ctx.dest.reshape(-1), pack(x, weights, ids).repeat_interleave(N, dim=0))
    out = torch.empty_like(send[:N * T])                                         # [N·T, P]: T rows per source
    collective.run(dist.all_to_all_single, out, send[:N * T], group=ctx.group)
    return unpack(out, x.shape[1], ids.shape[1], x.dtype)


def combine_padded(y, ctx):
    back = torch.empty_like(y)                                                   # [N·T, D]
    collective.run(dist.all_to_all_single, back, y.contiguous(), group=ctx.group)
    rows = back[ctx.dest.clamp(max=back.shape[0] - 1)]                           # [T, N, D]
    return torch.where(ctx.hit[..., None], rows.float(), 0.0).sum(1).to(y.dtype)


DISPATCH = {"allgather": (dispatch_allgather, combine_allgather),
            "alltoall": (dispatch_alltoall, combine_alltoall),
            "padded": (dispatch_padded, combine_padded)}


class Exchange:
    """One MoE layer's exchange: its EP group, expert bounds, and what dispatch leaves for combine."""

    def __init__(self, bounds: list[int], group, settings):
        self.bounds_list, self.group, self.settings = bounds, group, settings
        self.n = len(bounds) - 1
        self.bounds = None                        # a device tensor, made on the first call

    def dispatch(self, module, args):
        x, weights, ids = args
        if self.bounds is None or self.bounds.device != ids.device:
            self.bounds = torch.tensor(self.bounds_list, dtype=ids.dtype, device=ids.device)
        self.design = DISPATCH[self.settings.dispatch]
        with region("dispatch"):
            return self.design[0](x, weights, ids, self)

    def combine(self, module, args, y):
        with region("combine"):
            return self.design[1](y, self)


def attach(experts, bounds: list[int], group, settings) -> Exchange:
    """Make `experts` (an Experts module holding the experts [bounds[r], bounds[r+1]) of rank r)
    expert-parallel over `group`: it takes this rank's tokens and returns their full routed output."""
    ex = Exchange(bounds, group, settings)
    experts.register_forward_pre_hook(ex.dispatch)
    experts.register_forward_hook(ex.combine)
    return ex
