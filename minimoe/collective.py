"""Every torch.distributed collective of minimoe that moves tensors runs through `run`: on gloo its Work is kept.

gloo runs a collective on a worker thread. That thread holds a reference to the collective's Work, and the Work
holds the tensors. The thread drops its reference just after the caller's wait() has returned. If that drop frees
the Work, the tensors go with it, and freeing a tensor that has a Python object takes the GIL
(c10/util/intrusive_ptr.h, "PyObject preservation"). A rank that exits right after its last collective may be
tearing the interpreter down at that moment. The worker thread then cannot take the GIL, and the process aborts
with "terminate called without an active exception", exit -6. Before this module that happened in about half of
the `torchrun --nproc-per-node 2 -m minimoe generate --ep 2` runs on CPUs.

`run` keeps Python's own reference to each collective's Work (the last 4) past the worker thread's, so the Work
and its tensors are freed on the Python thread: at a later `run`, or at exit. GPU collectives (NCCL) run as plain
synchronous calls. Their buffers can be large, CUDA graph capture records them, and NCCL never showed the failure.
"""
from __future__ import annotations

import collections

_RECENT: collections.deque = collections.deque(maxlen=4)       # the last 4 CPU collectives' Work handles


def run(fn, /, *args, **kwargs) -> None:
    """fn(*args, **kwargs), e.g. run(dist.all_reduce, x, group=g): a synchronous torch.distributed collective
    whose first argument is a tensor. Raises what fn and Work.wait raise."""
    if args[0].device.type != "cpu":
        fn(*args, **kwargs)
        return
    work = fn(*args, async_op=True, **kwargs)
    work.wait()
    _RECENT.append(work)
