"""Guards the one-pass decode MoE (kernels/fused_moe_onepass.py: GEMM1 + GEMM2 split over I, then a fixed-order
reduce) against the float64 loop oracle and the two-kernel decode path, on awkward shapes and EP offsets."""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from minimoe.kernels import fused_moe_onepass  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe  # noqa: E402
from minimoe.kernels.fused_moe_small import SharedExpert  # noqa: E402
from tests.test_fused_moe import DEVICE, INTERPRET, TOL, make_layer, make_routing, reference_moe  # noqa: E402

TILES = [  # BLOCK_I past I, BLOCK_I not dividing I, one row of W2 a step, wide reduce
    {"BLOCK_I": 16, "BLOCK_K": 32, "BLOCK_D": 32, "num_warps": 4, "num_stages": 1, "REDUCE_D": 32},
    {"BLOCK_I": 64, "BLOCK_K": 16, "BLOCK_D": 16, "num_warps": 2, "num_stages": 2, "REDUCE_D": 64},
    {"BLOCK_I": 8, "BLOCK_K": 64, "BLOCK_D": 8, "num_warps": 1, "num_stages": 3, "REDUCE_D": 16},
]


def run(T, E, K, dtype, offset, n_global, tile, seed, d=40, i=44, routing="random"):
    gen = torch.Generator().manual_seed(seed)
    x, w13, w2 = make_layer(T, E, dtype, gen, d, i)
    ids, weights = make_routing(T, K, n_global, routing, gen)
    if offset > 0:                       # a local and a foreign slot, always
        ids[-1, -1], ids[0, 0] = offset - 1, offset + E - 1
    ids, weights = ids.to(DEVICE), weights.to(DEVICE)
    out = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config={"variant": "onepass", "onepass": tile})
    ref = reference_moe(x, w13, w2, ids, weights, offset)
    assert out.shape == (T, d) and out.dtype == dtype
    two = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config={"variant": "small"})
    return ((out.double().cpu() - ref).norm() / ref.norm()).item(), out, two


@pytest.mark.parametrize("E,K,T", [(60, 4, 1), (64, 8, 1), (8, 2, 3), (12, 1, 2), (6, 3, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_onepass_matches_oracle(E, K, T, dtype):
    # fp16 runs under an expert-parallel offset: ids span 2E experts, about half of them foreign
    offset, n_global = (0, E) if dtype == torch.float32 else (E // 2, 2 * E)
    seed = zlib.crc32(repr(("onepass", E, K, T, str(dtype))).encode())
    err, out, two = run(T, E, K, dtype, offset, n_global, TILES[seed % len(TILES)], seed)
    assert err <= TOL[dtype], f"relative error {err:.2e}"
    # the two-kernel path rounds h the same way: the two agree far inside the oracle's tolerance in fp32
    if dtype == torch.float32:
        assert torch.allclose(out, two, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", range(len(TILES)))
def test_onepass_tiles(n):
    err, _, _ = run(2, 60, 3, torch.float32, 5, 70, TILES[n], seed=n, d=72, i=100)
    assert err <= TOL[torch.float32], f"relative error {err:.2e}"


def test_onepass_one_expert_every_slot():
    err, _, _ = run(3, 8, 2, torch.float32, 0, 8, TILES[0], seed=4, routing="one_expert")
    assert err <= TOL[torch.float32]


def test_onepass_all_foreign_gives_zero():
    gen = torch.Generator().manual_seed(7)
    x, w13, w2 = make_layer(2, 6, torch.float32, gen)
    ids = torch.randint(0, 6, (2, 3), generator=gen).to(DEVICE)            # this layer holds 6..11
    out = fused_moe(x, w13, w2, ids, torch.ones(2, 3, device=DEVICE), expert_offset=6,
                    config={"variant": "onepass"})
    assert torch.equal(out, torch.zeros_like(out))


def test_switch_turns_it_on_for_small_plans_only(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    x, w13, w2 = make_layer(1, 64, torch.float32, gen)
    ids, weights = (t.to(DEVICE) for t in make_routing(1, 4, 64, "random", gen))
    calls = []
    real = fused_moe_onepass.fused_moe_onepass
    monkeypatch.setattr("minimoe.kernels.fused_moe.fused_moe_onepass", lambda *a: calls.append(a[-2]) or real(*a))
    fused_moe(x, w13, w2, ids, weights)
    assert calls == []                                                      # off by default
    monkeypatch.setitem(fused_moe_onepass.ONEPASS, (64, 48, 40, 4), {"BLOCK_I": 8})
    out = fused_moe(x, w13, w2, ids, weights)
    assert len(calls) == 1 and calls[0]["BLOCK_I"] == 8
    ref = reference_moe(x, w13, w2, ids, weights)
    assert ((out.double().cpu() - ref).norm() / ref.norm()).item() <= TOL[torch.float32]
    # another shape: not on (no None key)
    x2, w13b, w2b = make_layer(1, 64, torch.float32, gen, 40, 52)
    fused_moe(x2, w13b, w2b, ids, weights)
    assert len(calls) == 1
    # a shared expert rides in the two-kernel path instead
    shared = SharedExpert(*(t.to(DEVICE) for t in (torch.randn(2 * 24, 40, generator=gen) / 7,
                                                   torch.randn(40, 24, generator=gen) / 5)))
    fused_moe(x, w13, w2, ids, weights, shared=shared)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="without a shared expert"):
        fused_moe(x, w13, w2, ids, weights, shared=shared, config={"variant": "onepass"})


def test_unknown_tile_key_raises(monkeypatch):
    monkeypatch.setitem(fused_moe_onepass.ONEPASS, None, {"BLOCK_II": 8})
    with pytest.raises(ValueError, match="ONEPASS: unknown keys"):
        fused_moe_onepass.onepass_config(8, 48, 40, 2)


@pytest.mark.skipif(INTERPRET, reason="CUDA graphs need a GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(64, 8, 1024, 2048), (128, 8, 768, 2048)])
def test_onepass_graph_replay_matches_eager_bf16(shape):
    E, K, I, D = shape
    gen = torch.Generator().manual_seed(1)
    x, w13, w2 = make_layer(1, E, torch.bfloat16, gen, D, I)
    ids, weights = (t.to(DEVICE) for t in make_routing(1, K, E, "random", gen))
    config = {"variant": "onepass"}
    out = fused_moe(x, w13, w2, ids, weights, config=config)
    two = fused_moe(x, w13, w2, ids, weights, config={"variant": "small"})
    assert (out.float() - two.float()).norm() / two.float().norm() < 1e-2
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = fused_moe(x, w13, w2, ids, weights, config=config)
    new_ids, new_weights = (t.to(DEVICE) for t in make_routing(1, K, E, "random", gen))
    ids.copy_(new_ids)
    weights.copy_(new_weights)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_out, fused_moe(x, w13, w2, ids, weights, config=config))


def test_transposed_w2_view_gives_the_same_bits():
    """The kernel reads W2 through its strides: a transposed copy ([E, I, D] in memory) seen as [E, D, I]."""
    gen = torch.Generator().manual_seed(5)
    x, w13, w2 = make_layer(2, 12, torch.float32, gen, 40, 44)
    ids, weights = (t.to(DEVICE) for t in make_routing(2, 3, 12, "random", gen))
    cfg = fused_moe_onepass.onepass_default_config(44, 40)
    a = fused_moe_onepass.fused_moe_onepass(x, w13, w2, ids, weights, 0, cfg)
    w2t = w2.transpose(1, 2).contiguous().transpose(1, 2)
    assert w2t.stride(1) == 1 and torch.equal(w2t, w2)
    assert torch.equal(fused_moe_onepass.fused_moe_onepass(x, w13, w2t, ids, weights, 0, cfg), a)
