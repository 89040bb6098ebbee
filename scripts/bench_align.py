"""Time every expert-alignment method (minimoe.kernels.moe_align) per call; check they agree.

    python scripts/bench_align.py                 # CUDA GPU: table of µs per call
    python scripts/bench_align.py --groups 1 2 4  # also the parallel kernel at G experts/program
    python scripts/bench_align.py --check         # CPU too (TRITON_INTERPRET=1): equality; the prefill rows
                                                  # take minutes in the interpreter (>3 min on 2 cores)

Methods: "torch" (sync-free torch ops), "triton" (the one-program kernel), "parallel" (one program
per expert, the default up to ONE_PROGRAM_MAX_NUMEL pairs), "parallel-hist" (the same counting
with tl.histogram instead of a one-hot tile) and "chunked" (a histogram per chunk of ids, then a scatter per chunk:
the default above ONE_PROGRAM_MAX_NUMEL; `--chunks N` adds it at N chunks at most). The one-program kernel is
skipped past 8,192 pairs (it loops over every id on one SM: milliseconds). Each is timed two ways, median of 50 CUDA-event
timings after a warm-up: "eager" is one Python call (launch and allocator overhead included, what
an uncaptured prefill pays); "graph" is one replay of a CUDA graph of 20 back-to-back calls divided
by 20 (what a captured decode step pays: the GPU time alone). Every method's three outputs must
equal the torch path's, bit for bit, before its times are printed.

Shapes: (E, K, T) of the models we serve at decode batch sizes, BLOCK_M as the tuned H200 configs
pick it for that T (minimoe/kernels/configs). The 4096- and 8192-pair rows bracket the switch from "parallel" to
"chunked" (ONE_PROGRAM_MAX_NUMEL: 4096 when the twenty-fifth session's call 1 ran this, 8192 since); the rows after
them are prefill sizes (64 prompts of 128 tokens, 8,192 tokens).
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first `import triton`

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.kernels import moe_align  # noqa: E402

CASES = [  # (model, E, K, T, BLOCK_M)
    ("olmoe", 64, 8, 1, 16), ("olmoe", 64, 8, 8, 16), ("olmoe", 64, 8, 64, 16),
    ("olmoe", 64, 8, 256, 64),
    ("qwen3", 128, 8, 1, 16), ("qwen3", 128, 8, 64, 16), ("qwen3", 128, 8, 256, 32),
    ("mixtral", 8, 2, 1, 16), ("mixtral", 8, 2, 64, 32), ("mixtral", 8, 2, 512, 128),
    ("qwen15", 60, 4, 64, 16),
    ("olmoe", 64, 8, 512, 64),  # 4096 and 8192 pairs: around the parallel/chunked switch
    ("olmoe", 64, 8, 1024, 128), ("dsv2", 64, 6, 8192, 128), ("olmoe", 64, 8, 8192, 128),
    ("qwen3", 128, 8, 8192, 128), ("dsv3", 256, 8, 2048, 64),
]
ONE_PROGRAM_MAX = 8192  # pairs: the one-program kernel is not timed past this
CALLS = 20   # calls per captured graph
SAMPLES = 50  # timings per median


def methods(groups, chunks=()):
    """name -> fn(ids, E, block_m) returning (sorted_ids, block_expert, num_padded)."""
    def public(method):
        return lambda ids, E, bm: moe_align.align_tokens_by_expert(ids, E, bm, method=method)

    def parallel(**knobs):
        def call(ids, E, bm):
            flat = ids.view(-1)
            n_blocks = moe_align.num_blocks_bound(flat.numel(), E, bm)
            outs = tuple(torch.empty(n, dtype=torch.int32, device=ids.device)
                         for n in (n_blocks * bm, n_blocks, 1))
            moe_align._align_parallel(flat, E, bm, 0, *outs, **knobs)
            return outs
        return call

    def chunked(n):
        def call(ids, E, bm):
            flat = ids.view(-1)
            n_blocks = moe_align.num_blocks_bound(flat.numel(), E, bm)
            outs = tuple(torch.empty(n_, dtype=torch.int32, device=ids.device)
                         for n_ in (n_blocks * bm, n_blocks, 1))
            moe_align._align_chunked(flat, E, bm, 0, *outs, chunks=n)
            return outs
        return call

    table = {m: public(m) for m in ("torch", "triton", "parallel", "chunked")}
    table["parallel-hist"] = parallel(histogram=True)
    for g in groups:
        table[f"parallel-g{g}"] = parallel(experts_per_program=g)
    for n in chunks:
        table[f"chunked-{n}"] = chunked(n)
    return table


def time_eager(fn):
    """Median µs of one call, launch overhead included."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(SAMPLES):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def time_graph(fn):
    """Median µs per call of CALLS calls replayed from one CUDA graph (no launch overhead)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    for _ in range(3):
        graph.replay()
    return time_eager(graph.replay) / CALLS


def run_case(E, K, T, bm, table, timing, gen):
    """-> {method: (eager µs, graph µs) or None when not timed}; raises if any output differs."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ids = torch.rand(T, E, generator=gen).topk(K, dim=1).indices.int().to(dev)  # a router's top-K
    want = moe_align.align_tokens_by_expert(ids, E, bm, method="torch")
    result = {}
    for name, fn in table.items():
        if name == "triton" and T * K > ONE_PROGRAM_MAX:
            result[name] = "-"
            continue
        call = lambda fn=fn: fn(ids, E, bm)  # noqa: E731
        got = call()  # compiles here, outside any capture
        for a, b in zip(got, want):
            if not torch.equal(a, b):
                raise AssertionError(f"{name} differs from torch at E={E} K={K} T={T} BLOCK_M={bm}")
        if timing:
            for _ in range(3):
                call()
            result[name] = (time_eager(call), time_graph(call))
        else:
            result[name] = None
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="equality only, no timing (CPU ok)")
    parser.add_argument("--groups", type=int, nargs="*", default=[],
                        help="also time the parallel kernel at these experts per program")
    parser.add_argument("--chunks", type=int, nargs="*", default=[],
                        help="also time the chunked kernels at these many chunks at most")
    args = parser.parse_args()
    timing = not args.check
    if timing and not torch.cuda.is_available():
        parser.error("timing needs a CUDA GPU; use --check for the equality check alone")
    table = methods(args.groups, args.chunks)
    gen = torch.Generator().manual_seed(0)
    unit = "   (µs per call: eager / graph)" if timing else ""
    print(f"{'model':8} {'E':>4} {'K':>2} {'T':>5} {'pairs':>6} {'BM':>4}  "
          + "  ".join(f"{name:>15}" for name in table) + unit)
    for model, E, K, T, bm in CASES:
        result = run_case(E, K, T, bm, table, timing, gen)
        cells = ["equal" if r is None else r if isinstance(r, str) else f"{r[0]:6.1f} / {r[1]:5.1f}"
                 for r in result.values()]
        print(f"{model:8} {E:>4} {K:>2} {T:>5} {T * K:>6} {bm:>4}  "
              + "  ".join(f"{c:>15}" for c in cells), flush=True)
    print(f"(-: the one-program kernel is not run past {ONE_PROGRAM_MAX} pairs: it loops over every id on one SM)")


if __name__ == "__main__":
    main()
