"""Expert and tensor parallelism: one model over `ep x tp` processes launched by torchrun.

The mesh. World rank = e * tp + t. The `tp` ranks of one row e form a tensor-parallel group: they
hold the same sequences and split every matrix between them. The `ep` rows are expert-parallel:
row e decodes its own rows of the batch (data-parallel attention, each with its own KV cache) and
holds a contiguous range of every MoE layer's experts, [E·e/ep, E·(e+1)/ep) in global ids (ranges
differ by at most one expert when ep does not divide E). The ranks with the same t across rows form
an expert-parallel group, which exchanges tokens in every MoE layer.

    attention, dense FFN, shared experts   tensor-parallel (tensor_parallel.py: Megatron's column/row
                                           split, one all-reduce per sublayer), replicated across rows
    routed experts                         expert-parallel over the rows (dispatch.py: allgather |
                                           alltoall | padded), each expert split on its FFN width
    router, norms, embedding               replicated
    LM head                                vocab-parallel, logits all-gathered

How it is applied. `ParallelPlan` is the loader's `prepare` (loader.build_model picks it when
ep·tp > 1): on the meta model it registers forward hooks on the modules that need a collective and
returns the `Placement` that makes every rank read only its experts and shards from the checkpoint;
`finish` runs once the weights are in. The single-GPU modules never call torch.distributed: they
run in parallel only through these hooks, the way gpt-fast applies tensor parallelism.

Random weights are the same values one process would draw (`init_dummy` draws each placed tensor
whole, in the same order, and keeps this rank's piece), so every plan can be checked token for token
against one process. References: Megatron-LM (arXiv 1909.08053) for the tensor split; GShard
(arXiv 2006.16668) and DeepSpeed-MoE (arXiv 2201.05596) for expert parallelism; DeepSeek-V3's
data-parallel attention with expert-parallel MoE (arXiv 2412.19437 §3.4).
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import math
import os
import warnings

import torch
import torch.distributed as dist

from . import allreduce, collective, dispatch, tensor_parallel
from .config import ModelConfig
from .placement import Placement

# torch 2.12+ renames all_gather_into_tensor / reduce_scatter_tensor (*_single); the GPU machine's 2.11 has
# only the old names, which still work here, so their deprecation notice is silenced, not followed
warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).* deprecated",
                        category=FutureWarning)


@dataclasses.dataclass
class Mesh:
    ep: int
    tp: int
    rank: int                # world rank = ep_rank * tp + tp_rank
    ep_group: object         # the ranks sharing this tp_rank (None when ep = 1)
    tp_group: object         # the ranks sharing this ep_rank (None when tp = 1)

    @property
    def ep_rank(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp


_GROUPS: dict = {}       # (ep, tp) -> (ep groups, tp groups): new_group is collective, made once per shape


def init_distributed(device: str) -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...): NCCL with one GPU
    per process (LOCAL_RANK), gloo on CPUs. Raises ValueError outside torchrun."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--ep / --tp need several processes: launch with torchrun --nproc-per-node N")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    atexit.register(_shutdown)           # a process group left to interpreter teardown can abort a rank at exit
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _group(ranks: list[int]):
    if len(ranks) == 1:
        return None
    return dist.group.WORLD if len(ranks) == dist.get_world_size() else dist.new_group(ranks)


def make_mesh(ep: int, tp: int) -> Mesh:
    world, rank = dist.get_world_size(), dist.get_rank()
    if ep * tp != world:
        raise ValueError(f"--ep {ep} x --tp {tp} = {ep * tp} ranks, but torchrun started {world} processes")
    if (ep, tp) not in _GROUPS:            # every rank creates every group, in the same order
        ep_groups = [_group([e * tp + t for e in range(ep)]) for t in range(tp)]
        tp_groups = [_group([e * tp + t for t in range(tp)]) for e in range(ep)]
        _GROUPS[ep, tp] = ep_groups, tp_groups
    ep_groups, tp_groups = _GROUPS[ep, tp]
    return Mesh(ep, tp, rank, ep_groups[rank % tp], tp_groups[rank // tp])


def expert_bounds(n_experts: int, ep: int) -> list[int]:
    """Global expert ids where each EP rank's range starts (and E at the end): [E·e // ep for e in 0..ep]."""
    return [n_experts * e // ep for e in range(ep + 1)]


class ParallelPlan:
    """The loader's `prepare` for --ep / --tp: hooks and a Placement on the meta model, then `finish`."""

    def __init__(self, settings, mesh: Mesh):
        self.settings, self.mesh = settings, mesh
        self.bounds = {}                          # MoE layer -> expert_bounds of that layer
        self.reduce = None                        # the tensor-parallel all-reduce (allreduce.py), tp > 1

    def __call__(self, model) -> Placement:
        cfg, m = model.cfg, self.mesh
        placement = Placement()
        if m.ep > 1:
            for i, layer in enumerate(model.layers):
                if cfg.is_moe_layer(i):
                    self.bounds[i] = expert_bounds(cfg.layer_experts(i), m.ep)
                    placement.experts[i] = tuple(self.bounds[i][m.ep_rank:m.ep_rank + 2])
                    dispatch.attach(layer.ffn.experts, self.bounds[i], m.ep_group, self.settings)
        if m.tp > 1:
            s = self.settings
            self.reduce = allreduce.make(s.allreduce, m.tp_group, s.device, (s.torch_dtype, torch.float32))
            tensor_parallel.shard(model, m.tp_rank, m.tp, m.tp_group, placement, self.reduce)
        return placement

    def finish(self, model) -> None:
        """After the weights are in: row-parallel biases, the KV cache's local heads; model.plan = self."""
        if self.mesh.tp > 1:
            tensor_parallel.finish(model, self.mesh.tp_rank, self.mesh.tp)
            self.reduce.setup()                   # collective: symmetric buffers exchanged before any graph
        model.plan = self

    # ---- what drivers (bench, generate, tests) need --------------------------------------------
    def local_rows(self, batch: int) -> list[int]:
        """The rows of a global batch this rank decodes: a contiguous block of ceil(B / ep) under EP
        (all B under TP alone). A rank with fewer real rows repeats its first one (or row 0), so every
        rank steps the same token count; a repeated row routes like its original, so it touches no
        extra expert, and its outputs are dropped by `gather_rows`."""
        n = math.ceil(batch / self.mesh.ep)
        rows = list(range(self.mesh.ep_rank * n, min((self.mesh.ep_rank + 1) * n, batch)))
        return rows + [rows[0] if rows else 0] * (n - len(rows))

    def gather_rows(self, local: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-rank rows [ceil(B/ep), ...] (in `local_rows` order) -> the global [B, ...] on every rank."""
        if self.mesh.ep == 1:
            return local[:batch]
        local = local.contiguous()
        out = local.new_empty(self.mesh.ep * local.shape[0], *local.shape[1:])
        collective.run(dist.all_gather_into_tensor, out, local, group=self.mesh.ep_group)
        return out[:batch]

    def reduce_load(self, counts: torch.Tensor) -> torch.Tensor:
        """ExpertLoad counts [L, E] of this rank's tokens -> of the whole batch (summed over EP ranks)."""
        if self.mesh.ep > 1:
            collective.run(dist.all_reduce, counts, group=self.mesh.ep_group)
        return counts

    def rank_load(self, counts: torch.Tensor) -> list[list[int]]:
        """Global counts [L, E] -> tokens each EP rank's experts received, per MoE layer: [[per rank] per layer]."""
        return [[int(counts[i, b[e]:b[e + 1]].sum()) for e in range(len(b) - 1)] for i, b in sorted(self.bounds.items())]

    def describe(self) -> str:
        m = self.mesh
        return (f"ep={m.ep} tp={m.tp} rank={m.rank} (ep_rank {m.ep_rank}, tp_rank {m.tp_rank})"
                + (f" dispatch={self.settings.dispatch}" if m.ep > 1 else "")
                + (f" allreduce={self.settings.allreduce}" if m.tp > 1 else ""))

    def barrier(self) -> None:
        dist.barrier()

    def all_ranks(self, flag: bool) -> bool:
        """True when `flag` is True on every rank: Generator.generate's "has every row stopped?" under EP, whose
        ranks hold different rows and must stop at the same step (their collectives pair up). One all-reduce
        (MIN) of one int, at a step where the caller syncs with the host anyway."""
        if self.mesh.ep == 1:                     # TP peers hold the same rows and reach the same answer
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.settings.torch_device)
        collective.run(dist.all_reduce, t, op=dist.ReduceOp.MIN)
        return bool(t.item())


def plan_for(settings) -> ParallelPlan:
    """The plan --ep/--tp ask for, joining torchrun's process group if not yet done."""
    init_distributed(settings.device)
    return ParallelPlan(settings, make_mesh(settings.ep, settings.tp))


def host_ram_need(nbytes: int, free: int) -> tuple[int, int, str | None]:
    """Under torchrun on CPUs the ranks of one host share its RAM, so a rank's own share can fit while all of them
    together do not (the OOM killer then ends one rank with no message). Returns (the bytes the ranks of a host need
    together, the free RAM to hold them in, a note for the message): the largest of (a rank's need x its host's
    LOCAL_WORLD_SIZE) and the least free RAM any rank measured. One gloo all-reduce (MAX) of four int64s, made by
    every rank between its measurement and any allocation, so every rank compares the same two numbers and takes
    the same decision. Outside a process group: (nbytes, free, None)."""
    if not (dist.is_available() and dist.is_initialized()):
        return nbytes, free, None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    t = torch.tensor([nbytes * local, nbytes, -free, local], dtype=torch.int64)
    collective.run(dist.all_reduce, t, op=dist.ReduceOp.MAX)
    need, each, free, ranks = int(t[0]), int(t[1]), -int(t[2]), int(t[3])
    return need, free, f"{ranks} ranks on this host x up to {each / 2**30:.1f} GiB"


def rank() -> int:
    """This process's world rank (0 outside a process group): drivers print on rank 0 only."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ---- random weights: the values one process draws, this rank's piece ----------------------------

def _expert_layer(name: str) -> int | None:
    return int(name.split(".")[1]) if name.endswith(("experts.w13", "experts.w2")) else None


def _part_sizes(name: str, cfg: ModelConfig, size: int) -> list[int]:
    """The parts a fused parameter concatenates along its sharded dim (each is split on its own)."""
    if name.endswith(("attn.wqkv.weight", "attn.wqkv.bias")):
        return [cfg.n_heads * cfg.head_dim] + [cfg.n_kv_heads * cfg.head_dim] * 2
    if name.endswith(("w13.weight", "experts.w13")):
        return [size // 2] * 2                                       # gate rows, then up rows
    return [size]


def is_placed(name: str, placement: Placement) -> bool:
    layer = _expert_layer(name)
    return name in placement.shards or (layer is not None and layer in placement.experts)


def full_shape(name: str, shape, cfg: ModelConfig, placement: Placement) -> list[int]:
    """The shape one process holds for a parameter of which this rank holds `shape`."""
    full, layer = list(shape), _expert_layer(name)
    if layer is not None and layer in placement.experts:
        full[0] = cfg.layer_experts(layer)
    if name in placement.shards:
        dim, _, count = placement.shards[name]
        full[dim] *= count
    return full


def held_piece(full: torch.Tensor, name: str, cfg: ModelConfig, placement: Placement) -> torch.Tensor:
    """The piece of a whole parameter this rank holds: its experts, then its shard of every part."""
    layer = _expert_layer(name)
    if layer is not None and layer in placement.experts:
        full = full[slice(*placement.experts[layer])]
    if name in placement.shards:
        dim, index, count = placement.shards[name]
        parts = full.split(_part_sizes(name, cfg, full.shape[dim]), dim)
        full = torch.cat([p.chunk(count, dim)[index] for p in parts], dim)
    return full


# ---- checks (runtime.check_settings calls this before anything is built) ------------------------

def check_plan(s, cfg: ModelConfig) -> None:
    """Refuse a plan this model or launch cannot run, in one sentence naming the flag (ValueError)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if s.ep * s.tp != world:
        if s.ep * s.tp == 1:
            raise ValueError(f"this launch has {world} processes but no plan, so each would run the whole model: "
                             f"add --ep / --tp whose product is {world}, or run one process")
        raise ValueError(f"--ep {s.ep} x --tp {s.tp} needs {s.ep * s.tp} processes, but this launch has {world}: "
                         f"run under torchrun --nproc-per-node {s.ep * s.tp}")
    gpus_here = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if str(s.device).startswith("cuda") and torch.cuda.is_available() and gpus_here > torch.cuda.device_count():
        raise ValueError(f"--ep/--tp: {gpus_here} processes on this node but only {torch.cuda.device_count()} GPU(s)")
    if s.ep > 1:
        if not cfg.is_moe:
            raise ValueError(f"--ep {s.ep} needs an MoE model")
        fewest = min(cfg.layer_experts(i) for i in range(cfg.n_layers) if cfg.is_moe_layer(i))
        if fewest < s.ep:
            raise ValueError(f"--ep {s.ep}: a layer has only {fewest} experts, fewer than the ranks")
        if s.dispatch == "alltoall" and s.use_graphs:
            raise ValueError("--dispatch alltoall exchanges token counts with the host in every MoE layer, so the "
                             "decode step cannot be a CUDA graph: add --eager, or use --dispatch allgather | padded")
    if s.tp > 1:
        tensor_parallel.check(cfg, s.tp)
    if s.allreduce == "symm":
        if s.tp == 1:
            raise ValueError(f"--allreduce {s.allreduce} is the tensor-parallel all-reduce: it needs --tp 2 or more")
        if not str(s.device).startswith("cuda"):
            raise ValueError(f"--allreduce {s.allreduce} needs CUDA GPUs (symmetric memory); on CPUs use nccl "
                             "(gloo there)")
