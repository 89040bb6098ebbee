"""The tensor-parallel all-reduce, two switchable designs (`--allreduce`).

Every tensor-parallel sublayer ends in one all-reduce of its partial output (tensor_parallel.py): two per
layer, 64 per Mixtral decode step. At batch 1 that is 8 KiB each, where a collective's cost is all
latency: NCCL's ring/tree protocols pay ~10 µs per call on two NVLink H200s (docs/parallelism.md).

    nccl   the process group's all_reduce (NCCL on GPUs, gloo on CPUs). In place.
    symm   a one-shot all-reduce over symmetric memory (torch.distributed._symmetric_memory): every rank
           has a buffer its peers can address (CUDA IPC over NVLink); one kernel copies this rank's
           partial into its buffer, waits at a barrier on signal pads, reads every peer's buffer and
           sums them. One launch, no protocol, no proxy thread: the design of vLLM's custom all-reduce
           and TensorRT-LLM's one-shot kernel for small messages, here through PyTorch's own op
           `symm_mem::one_shot_all_reduce_copy_out`. Each rank reads world x the message, so it serves
           contiguous bf16 / fp32 messages up to `SYMM_MAX_BYTES` (decode: [B <= 128, 4096] bf16; a
           message not a multiple of 16 bytes, like OLMoE's [B, 1, 2] fp32 q/k-norm statistics, is
           zero-padded to one); larger ones (prefill) and other dtypes (fp16) go through NCCL. The rule
           depends on shape and dtype only, so what is measured does not change from run to run;
           `calls` counts the Python calls of each path (a captured CUDA graph counts once), and
           scripts/bench_parallel.py records it per row.
NVLink multicast (`multimem` ops) is deliberately not used: the device machines keep it off.

Shapes: a reducer takes any contiguous tensor x [..] (the sublayer output [B, S, D]) and returns the
sum over the group's ranks, same shape and dtype (a new tensor for `symm`, x itself for `nccl`).
Errors: ValueError at construction for `symm` off CUDA or without the op (torch < 2.8).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import collective

SYMM_MAX_BYTES = 1 << 20                        # one-shot reads world x this per rank; prefill goes to NCCL
SYMM_DTYPES = (torch.bfloat16, torch.float32)   # the op's kernels (AT_DISPATCH_FLOAT_AND_BFLOAT16)


class NcclAllReduce:
    """dist.all_reduce in place (NCCL on GPUs, gloo on CPUs)."""

    def __init__(self, group, device, dtypes):
        self.group = group
        self.calls = {"nccl": 0}

    def setup(self) -> None:
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls["nccl"] += 1
        collective.run(dist.all_reduce, x, group=self.group)
        return x


class SymmAllReduce:
    """One-shot all-reduce through symmetric memory for messages <= SYMM_MAX_BYTES, NCCL above."""

    def __init__(self, group, device, dtypes):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError("--allreduce symm needs CUDA GPUs (symmetric memory over NVLink); use --allreduce nccl")
        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out"):
            raise ValueError(f"--allreduce symm needs torch.ops.symm_mem.one_shot_all_reduce_copy_out "
                             f"(torch >= 2.8); this is torch {torch.__version__}")
        self.group, self.device = group, device
        self.dtypes = [d for d in dict.fromkeys(dtypes) if d in SYMM_DTYPES]
        self.buffers: dict = {}
        self.calls = {"symm": 0, "nccl": 0}

    def setup(self) -> None:
        """Allocate and exchange the buffers (collective over the group: every rank calls it, in the same
        order, before any CUDA graph is captured)."""
        import torch.distributed._symmetric_memory as symm_mem
        group = self.group or dist.group.WORLD
        self.group_name = group.group_name
        for dtype in self.dtypes:
            buf = symm_mem.empty(SYMM_MAX_BYTES // dtype.itemsize, dtype=dtype, device=self.device)
            symm_mem.rendezvous(buf, group)
            self.buffers[dtype] = buf

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        buf = self.buffers.get(x.dtype)
        n = x.numel()
        padded = -(-n * x.element_size() // 16) * 16 // x.element_size()      # whole 16-byte vectors
        if buf is None or padded > buf.numel() or not x.is_contiguous():
            self.calls["nccl"] += 1
            collective.run(dist.all_reduce, x, group=self.group)
            return x
        self.calls["symm"] += 1
        flat = x.view(-1) if padded == n else torch.nn.functional.pad(x.view(-1), (0, padded - n))
        out = torch.empty_like(flat)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(buf[:padded], flat, "sum", self.group_name, out)
        return out[:n].view_as(x)


ALLREDUCE = {"nccl": NcclAllReduce, "symm": SymmAllReduce}     # settings.resolve turns "auto" into one of these


def make(kind: str, group, device, dtypes) -> NcclAllReduce | SymmAllReduce:
    """The reducer `kind` names (a key of ALLREDUCE) for `group`; call `.setup()` on every rank once the
    model is on its device. dtypes: the dtypes it will see (the model's, and fp32 for norm statistics)."""
    if kind not in ALLREDUCE:
        raise ValueError(f"--allreduce {kind!r}: choose one of {', '.join(ALLREDUCE)}")
    return ALLREDUCE[kind](group, device, dtypes)
