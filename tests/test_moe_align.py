"""Guards the multi-program ("parallel", "chunked") alignments: bit-for-bit equal to torch, triton, a loop."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the kernels are decorated: @triton.jit reads it at import time.
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from minimoe.kernels import moe_align, moe_align_chunked  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
METHODS = ("parallel", "chunked", "triton", "torch")


def make_ids(T, K, E, offset, routing, gen):
    """topk_ids [T, K] as a router would give them (K distinct global experts per token).
    The local experts are offset .. offset+E-1. random: ids drawn from 0 .. offset+E-1;
    half_foreign: from 2E experts starting at max(offset - E, 0), so about half are foreign;
    one_expert: every id is local expert 3 % E; even_only: odd local experts stay empty."""
    if routing == "one_expert":
        return torch.full((T, K), offset + 3 % E, dtype=torch.int64)
    first, n = (max(offset - E, 0), 2 * E) if routing == "half_foreign" else (0, offset + E)
    ids = first + torch.rand(T, max(n, K), generator=gen).topk(K, dim=1).indices
    if routing == "even_only":
        ids = offset + (ids % E) // 2 * 2      # repeats within a token are allowed by the contract
    return ids


def reference(ids, E, block_m, offset):
    """The contract written as a plain loop over experts."""
    flat = ids.view(-1).tolist()
    numel = len(flat)
    n_blocks = moe_align.num_blocks_bound(numel, E, block_m)
    sorted_ids, block_expert = [], []
    for e in range(E):
        rows = [i for i, x in enumerate(flat) if x - offset == e]
        n_pad = -len(rows) % block_m
        sorted_ids += rows + [numel] * n_pad
        block_expert += [e] * ((len(rows) + n_pad) // block_m)
    total = len(sorted_ids)
    sorted_ids += [numel] * (n_blocks * block_m - total)
    block_expert += [-1] * (n_blocks - len(block_expert))
    as_int = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    return as_int(sorted_ids), as_int(block_expert), as_int([total])


def check_all_equal(ids, E, block_m, offset):
    want = reference(ids, E, block_m, offset)
    for method in METHODS:
        got = moe_align.align_tokens_by_expert(ids.to(DEVICE), E, block_m, offset, method=method)
        for name, a, b in zip(("sorted_ids", "block_expert", "num_padded"), got, want):
            assert torch.equal(a.cpu(), b), f"{method}: {name} differs"


# (T, K, E, BLOCK_M, expert_offset, routing): numel = T·K runs over 1, 2, 7, 64, 512, 3000
CASES = [
    (1, 1, 64, 16, 0, "random"),           # numel 1: one live block, the rest of the grid idle
    (1, 2, 8, 64, 0, "random"),            # numel 2, Mixtral decode at batch 1
    (7, 1, 8, 16, 0, "random"),            # numel 7
    (8, 8, 64, 16, 0, "random"),           # numel 64, OLMoE decode at batch 8
    (64, 8, 64, 16, 0, "random"),          # numel 512, OLMoE decode at batch 64 (the 19 µs case)
    (64, 8, 64, 64, 0, "random"),
    (1500, 2, 8, 16, 0, "random"),         # numel 3000: several count / rank chunks per program
    (3000, 1, 8, 128, 0, "one_expert"),    # 3000 ids on one expert: the cursor crosses rank chunks
    (50, 1, 1, 16, 0, "random"),           # E = 1: a single program
    (30, 2, 2, 16, 0, "random"),
    (16, 4, 60, 16, 0, "random"),          # E not a power of 2 (Qwen1.5-MoE)
    (8, 8, 128, 16, 0, "random"),
    (4, 8, 256, 64, 0, "random"),          # 256 experts, almost all empty
    (64, 1, 8, 16, 0, "one_expert"),
    (32, 2, 64, 16, 0, "even_only"),       # empty experts between full ones
    (32, 8, 16, 16, 16, "half_foreign"),   # expert parallelism: ids below the offset are foreign,
    (32, 8, 16, 64, 0, "half_foreign"),    # ... ids past offset + E,
    (16, 8, 60, 16, 30, "half_foreign"),   # ... and both
]


@pytest.mark.parametrize("T,K,E,block_m,offset,routing", CASES)
def test_methods_agree(T, K, E, block_m, offset, routing):
    ids = make_ids(T, K, E, offset, routing, torch.Generator().manual_seed(T * 1000 + E))
    check_all_equal(ids, E, block_m, offset)


@pytest.mark.parametrize("E,group,histogram", [(60, 8, False), (60, 8, True), (64, 2, True),
                                               (8, 1, True), (128, 4, False)])
def test_parallel_knobs(E, group, histogram):
    """Grouped experts per program (the last group runs past E: foreign ids >= E must not match
    those columns) and tl.histogram counting give the same answer."""
    ids = make_ids(16, 4, E, 0, "half_foreign", torch.Generator().manual_seed(E)).to(DEVICE)
    want = moe_align.align_tokens_by_expert(ids, E, 16, 0, method="torch")
    got = [torch.full_like(t, -7) for t in want]  # garbage-filled: every entry must be written
    moe_align._align_parallel(ids.view(-1), E, 16, 0, *got, experts_per_program=group,
                              histogram=histogram)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_int32_ids_and_empty_batch():
    ids = make_ids(9, 2, 8, 0, "random", torch.Generator().manual_seed(3)).int()
    check_all_equal(ids, 8, 16, 0)
    empty = torch.zeros(0, 2, dtype=torch.int64, device=DEVICE)
    for method in (None, *METHODS):
        sorted_ids, block_expert, num_padded = moe_align.align_tokens_by_expert(empty, 8, 16, method=method)
        assert sorted_ids.numel() == block_expert.numel() == 0 and int(num_padded) == 0, method


def test_default_method_by_size(monkeypatch):
    calls = []
    for name in ("_align_parallel", "_align_chunked", "_align_torch"):
        monkeypatch.setattr(moe_align, name, lambda *a, name=name, **kw: calls.append(name))
    ids = torch.zeros(4, 2, dtype=torch.int64, device=DEVICE)
    moe_align.align_tokens_by_expert(ids, 8, 16)
    monkeypatch.setattr(moe_align, "ONE_PROGRAM_MAX_NUMEL", 7)
    moe_align.align_tokens_by_expert(ids, 8, 16)
    monkeypatch.setattr(moe_align, "LARGE_METHOD", "torch")
    moe_align.align_tokens_by_expert(ids, 8, 16)
    assert calls == ["_align_parallel", "_align_chunked", "_align_torch"]


# (T, K, E, BLOCK_M, expert_offset, routing, chunks at most, CHUNK_MIN, chunks launched)
@pytest.mark.parametrize("T,K,E,block_m,offset,routing,chunks,chunk_min,n_chunks", [
    (500, 6, 64, 16, 0, "random", 128, 16, 94),        # 3,000 ids in 32-id chunks
    (333, 3, 60, 64, 0, "random", 37, 16, 32),         # 999 ids in 32-id chunks, the last ragged
    (200, 8, 16, 16, 16, "half_foreign", 9, 16, 7),    # expert parallelism: foreign ids in every chunk
    (150, 8, 256, 16, 0, "random", 128, 16, 38),       # 256 experts: at most 64 chunks (a 16K-entry table)
    (150, 8, 256, 16, 0, "half_foreign", 8, 64, 5),    # 256 experts, 256-id chunks ranked in 8 passes of 32
    (96, 2, 8, 16, 0, "one_expert", 12, 16, 12),       # every id on one expert: its cursor crosses all chunks
    (64, 4, 64, 16, 0, "even_only", 5, 16, 4),         # empty experts between full ones
])
def test_chunked_across_many_chunks(monkeypatch, T, K, E, block_m, offset, routing, chunks, chunk_min, n_chunks):
    """Small chunks, so each program's offset comes from many rows of the count table (and, with 256 experts and
    256-id chunks, a chunk's cursor crosses rank passes); every entry is written (the outputs start as garbage) and
    equals the torch path's."""
    monkeypatch.setattr(moe_align_chunked, "CHUNK_MIN", chunk_min)
    launched = []
    real = moe_align_chunked._align_chunk_scatter_kernel
    monkeypatch.setattr(moe_align_chunked, "_align_chunk_scatter_kernel", type("L", (), {
        "__getitem__": lambda self, grid: launched.append(grid[0]) or real[grid]})())
    ids = make_ids(T, K, E, offset, routing, torch.Generator().manual_seed(T + E)).to(DEVICE)
    want = moe_align.align_tokens_by_expert(ids, E, block_m, offset, method="torch")
    got = [torch.full_like(t, -7) for t in want]
    moe_align._align_chunked(ids.view(-1), E, block_m, offset, *got, chunks=chunks)
    for name, a, b in zip(("sorted_ids", "block_expert", "num_padded"), got, want):
        assert torch.equal(a, b), name
    assert launched == [n_chunks]


@pytest.mark.skipif(INTERPRET, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("method,T", [("parallel", 64), ("chunked", 64), ("chunked", 8192)])
def test_parallel_captures_in_a_cuda_graph(method, T):
    """No host sync: the call captures, and a replay follows new ids written in place."""
    gen = torch.Generator().manual_seed(5)
    ids = make_ids(T, 8, 64, 0, "random", gen).cuda()
    moe_align.align_tokens_by_expert(ids, 64, 16, method=method)  # compile outside
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe_align.align_tokens_by_expert(ids, 64, 16, method=method)
    ids.copy_(make_ids(T, 8, 64, 0, "random", gen))
    graph.replay()
    torch.cuda.synchronize()
    want = moe_align.align_tokens_by_expert(ids.cpu(), 64, 16, method="torch")
    for a, b in zip(out, want):
        assert torch.equal(a.cpu(), b)
