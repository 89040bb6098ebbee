"""Guards split-K decode attention against its PyTorch oracle: GQA/MHA/MLA, splits, NaN tails."""

import pytest
import torch

pytest.importorskip("triton")

import minimoe.kernels.decode_attention as dattn  # noqa: E402
from minimoe.kernels.decode_attention import (  # noqa: E402
    _head_dim_blocks,
    _plan_splits,
    counters_needed,
    decode_attention,
)
from minimoe.kernels.decode_attention_ref import decode_attention_ref  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}  # max|err| / max|ref|
# the interpreter has no bfloat16; on a GPU run the real kernels cover it too
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")


def _poison_tail(cache, seq_lens):
    """Fill every position >= seq_lens[b] with NaN: the kernel must never read them."""
    for b, n in enumerate(seq_lens.tolist()):
        cache[b, n:] = float("nan")


def _check(q, k_cache, v_cache, seq_lens, **kw):
    scale = q.shape[-1] ** -0.5
    out = decode_attention(q, k_cache, v_cache, seq_lens, scale, **kw)
    ref = decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), seq_lens, scale)
    assert out.shape == ref.shape and out.dtype == q.dtype
    assert not out.isnan().any(), "NaN leaked from cache positions beyond seq_lens"
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err <= TOL[q.dtype], f"relative error {err:.2e} > {TOL[q.dtype]:.0e}"


def _seq_lens(s_max, B):
    lens = torch.randint(1, s_max + 1, (B,))
    lens[0], lens[-1] = 1, s_max  # the extremes are always in the batch
    return lens.to(torch.int32).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,Hkv,D", [(4, 2, 64), (6, 1, 64), (4, 4, 64), (16, 2, 128)])
def test_gqa_uneven_lengths_split(H, Hkv, D, dtype):
    torch.manual_seed(0)
    B, s_max = 4, 1024
    # the engine hands in strided views: q sliced out of a fused projection, cache head-major
    q = torch.randn(B, H + 3, D, device=DEVICE, dtype=dtype)[:, 2:2 + H]
    k_cache = torch.randn(B, Hkv, s_max, D, device=DEVICE, dtype=dtype).transpose(1, 2)
    v_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE, dtype=dtype)
    seq_lens = _seq_lens(s_max, B)
    _poison_tail(k_cache, seq_lens)
    _poison_tail(v_cache, seq_lens)
    assert _plan_splits(B, Hkv, s_max, 64, DEVICE, None)[0] > 1, "test meant to cover the merge"
    _check(q, k_cache, v_cache, seq_lens)


def _fp32_case(seed, H, Hkv, s_max, D, lens):
    """fp32 q [B, H, D] and caches [B, s_max, Hkv, D] whose entries past each sequence's length are NaN."""
    torch.manual_seed(seed)
    B = len(lens)
    q = torch.randn(B, H, D, device=DEVICE)
    k_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE)
    v_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    _poison_tail(k_cache, seq_lens)
    _poison_tail(v_cache, seq_lens)
    return q, k_cache, v_cache, seq_lens


@pytest.mark.parametrize("max_splits", [1, 3])
def test_split_count_does_not_change_result(max_splits):
    q, k_cache, v_cache, seq_lens = _fp32_case(1, 8, 1, 600, 64, [1, 257, 600])
    assert _plan_splits(3, 1, 600, 64, DEVICE, max_splits)[0] == max_splits
    _check(q, k_cache, v_cache, seq_lens, max_splits=max_splits)


@pytest.mark.parametrize("tiles", [dict(BLOCK_N=32, num_warps=2, num_stages=3), dict(BLOCK_N=128, num_warps=8),
                                   dict(num_stages=4)])
@pytest.mark.parametrize("max_splits", [1, 3])
def test_launch_tiles_do_not_change_result(tiles, max_splits):
    """The tile override of scripts/bench_attn_tiles.py (and any default it leads to): same answer, with and
    without the merge, on lengths that end inside a tile and a cache whose tail is NaN."""
    q, k_cache, v_cache, seq_lens = _fp32_case(2, 8, 2, 300, 64, [1, 97, 300])
    _check(q, k_cache, v_cache, seq_lens, max_splits=max_splits, tiles=tiles)


@pytest.mark.parametrize("max_splits", [2, 3, 7])
@pytest.mark.parametrize("Dv", [64, 40])
def test_tile_merge_equals_loop_merge(monkeypatch, max_splits, Dv):
    """The merge kernel's one-load tile (decode_attention_merge.TILE_ELEMS) against its loop and the oracle: splits
    that are not a power of two (masked rows), a sequence of one entry (one valid split), a Dv padded to 64."""
    import minimoe.kernels.decode_attention_merge as merge
    torch.manual_seed(3)
    B, H, Hkv, s_max, D = 3, 8, 2, 300, 64
    q = torch.randn(B, H, D, device=DEVICE)
    k_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE)
    v_cache = torch.randn(B, s_max, Hkv, Dv, device=DEVICE)
    seq_lens = torch.tensor([1, 97, 300], dtype=torch.int32, device=DEVICE)
    _poison_tail(k_cache, seq_lens)
    _poison_tail(v_cache, seq_lens)
    monkeypatch.setattr(merge, "TILE_ELEMS", 0)
    loop = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=max_splits, min_tiles=1)
    tiles = []
    real = merge.merge_splits_kernel
    monkeypatch.setattr(dattn, "merge_splits_kernel", _Spy(real, tiles))
    monkeypatch.setattr(merge, "TILE_ELEMS", 1 << 20)
    tile = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=max_splits, min_tiles=1)
    assert tiles == [True]
    assert (tile - loop).abs().max().item() <= 1e-6 * loop.abs().max().item()
    _check(q, k_cache, v_cache, seq_lens, max_splits=max_splits, min_tiles=1)


def test_early_merge_loads_equal_the_tile(monkeypatch):
    """decode_attention_merge.EARLY_LOADS: the tile's loads issued before seq_len is known, every split of the grid
    read and the empty ones dropped after; the partial buffers start as NaN (torch.empty's stale memory at its worst),
    so a split past seq_len that leaked into the sum would show. The same bits as the tile without it."""
    import minimoe.kernels.decode_attention_merge as merge
    q, k_cache, v_cache, seq_lens = _fp32_case(4, 8, 2, 300, 64, [1, 97, 300])
    real_empty = torch.empty

    def nan_empty(*shape, **kw):     # the partials and lse: float32 buffers full of NaN
        t = real_empty(*shape, **kw)
        return t.fill_(float("nan")) if t.dtype == torch.float32 else t
    monkeypatch.setattr(dattn.torch, "empty", nan_empty)
    monkeypatch.setattr(merge, "TILE_ELEMS", 1 << 20)
    early = []
    monkeypatch.setattr(dattn, "merge_splits_kernel", _Spy(merge.merge_splits_kernel, early, "EARLY"))
    monkeypatch.setattr(merge, "EARLY_LOADS", False)
    tile = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=5, min_tiles=1)
    monkeypatch.setattr(merge, "EARLY_LOADS", True)
    out = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=5, min_tiles=1)
    assert early == [False, True]
    assert not out.isnan().any() and torch.equal(out, tile)


@pytest.mark.parametrize("H,Hkv,Dv", [(8, 2, 64), (4, 4, 64), (6, 1, 40)])
def test_early_tile_equals_the_loop(monkeypatch, H, Hkv, Dv):
    """decode_attention.EARLY_TILE: where every split is one K tile, q and the tile are loaded before seq_len, the rows
    past it dropped after (the cache's tail is NaN); the same bits as the loop's one step, and the oracle's answer.
    With more tiles a split (max_splits 2), several new tokens, or no tile split at all, the kernel keeps its loop."""
    q, k_cache, v_cache, seq_lens = _fp32_case(5, H, Hkv, 300, 64, [1, 97, 300])
    v_cache = v_cache[..., :Dv]                           # a value head narrower than its power-of-two block
    early = []
    monkeypatch.setattr(dattn, "_decode_split_kernel", _Spy(dattn._decode_split_kernel, early, "EARLY"))
    monkeypatch.setattr(dattn, "EARLY_TILE", False)
    loop = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, min_tiles=1)
    monkeypatch.setattr(dattn, "EARLY_TILE", True)
    out = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, min_tiles=1)
    assert early == [False, True]
    assert torch.equal(out, loop)
    _check(q, k_cache, v_cache, seq_lens, min_tiles=1)
    decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=2, min_tiles=1)
    positions = (seq_lens - 1).long()[:, None]
    decode_attention(q[:, None], k_cache, v_cache, seq_lens, 0.125, positions=positions, min_tiles=1)
    assert early[-3:] == [True, False, False]


class _Spy:
    """kernel[grid](...) that records one constexpr of each launch (TILE by default) and launches the real kernel."""
    def __init__(self, real, seen, key="TILE"):
        self.real, self.seen, self.key = real, seen, key

    def __getitem__(self, grid):
        def launch(*a, **k):
            self.seen.append(k.get(self.key))
            return self.real[grid](*a, **k)
        return launch


def test_default_tiles_apply_when_none_are_given(monkeypatch):
    """DEFAULT_TILES (the step probe's knob) reaches the split plan when a caller passes no tiles, and gives the
    answer an explicit `tiles=` gives, bit for bit."""
    q, k_cache, v_cache, seq_lens = _fp32_case(2, 8, 2, 300, 64, [1, 97, 300])
    explicit = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, tiles=dict(BLOCK_N=32, num_stages=3))
    seen = []
    real_plan = dattn._plan_splits
    monkeypatch.setattr(dattn, "_plan_splits", lambda B, pps, s_max, block_n, *a, **k:
                        seen.append(block_n) or real_plan(B, pps, s_max, block_n, *a, **k))
    monkeypatch.setattr(dattn, "DEFAULT_TILES", dict(BLOCK_N=32, num_stages=3))
    out = decode_attention(q, k_cache, v_cache, seq_lens, 0.125)
    assert seen == [32]
    assert torch.equal(out, explicit)


def _spy_stages(monkeypatch) -> list:
    """Record each split-kernel launch's num_stages (the launch still runs) on an H200-sized (132 SM) plan."""
    real, stages = dattn._decode_split_kernel, []

    class Spy:
        def __getitem__(self, grid):
            return lambda *a, **k: stages.append(k["num_stages"]) or real[grid](*a, **k)

    monkeypatch.setattr(dattn, "_decode_split_kernel", Spy())
    monkeypatch.setattr(dattn, "_sm_count", lambda device: 132)
    return stages


@pytest.mark.parametrize("B, hkv, G, big", [(9, 16, 2, True), (2, 4, 2, False), (9, 16, 1, False)])
def test_big_grid_stages_rule(monkeypatch, B, hkv, G, big):
    """BIG_GRID_STAGES[(G, Dk)] reaches the split kernel's launch only when B x Hkv programs fill the SMs and the
    table lists the shape (else 2 stages); the answer stays the oracle's."""
    torch.manual_seed(B * G)
    q = torch.randn(B, G * hkv, 64, device=DEVICE)
    k_cache, v_cache = torch.randn(2, B, 70, hkv, 64, device=DEVICE)
    seq_lens = torch.randint(1, 71, (B,), device=DEVICE, dtype=torch.int32)
    stages = _spy_stages(monkeypatch)
    monkeypatch.setattr(dattn, "BIG_GRID_STAGES", {(2, 64): 3})
    out = decode_attention(q, k_cache, v_cache, seq_lens, 0.125)
    assert stages == [3 if big else 2]
    torch.testing.assert_close(out, decode_attention_ref(q, k_cache, v_cache, seq_lens, 0.125), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("G", [1, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_big_grid_stages_on_the_listed_shapes(monkeypatch, G, dtype):
    """The table's own shapes (Dk 128, G 1 / 8) launch with their stages and match the oracle: on a GPU this is
    also the check that 3 stages of fp32 K / V tiles fit in shared memory."""
    B, hkv = (9, 16) if G == 1 else (33, 4)                 # 144 / 132 programs: the grid fills 132 SMs
    torch.manual_seed(G)
    q = torch.randn(B, G * hkv, 128, device=DEVICE, dtype=dtype)
    k_cache, v_cache = torch.randn(2, B, 150, hkv, 128, device=DEVICE, dtype=dtype)
    seq_lens = torch.randint(1, 151, (B,), device=DEVICE, dtype=torch.int32)
    stages = _spy_stages(monkeypatch)
    _check(q, k_cache, v_cache, seq_lens)
    assert stages and set(stages) == {dattn.BIG_GRID_STAGES[(G, 128)]}


def _mla_inputs(B, H, s_max, d_latent, d_rope, dtype, seed):
    torch.manual_seed(seed)
    q = torch.randn(B, H, d_latent + d_rope, device=DEVICE, dtype=dtype)
    latent = torch.randn(B, s_max, 1, d_latent + d_rope, device=DEVICE, dtype=dtype)
    seq_lens = _seq_lens(s_max, B)
    _poison_tail(latent, seq_lens)
    return q, latent, seq_lens


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v_is_view", [True, False])
def test_mla_shrunk(v_is_view, dtype):
    """Absorbed MLA at toy size: Hkv = 1, Dk = 40 = 32 latent + 8 rope, V = a latent view."""
    q, latent, seq_lens = _mla_inputs(B=3, H=16, s_max=600, d_latent=32, d_rope=8, dtype=dtype,
                                      seed=2)
    v_cache = latent[..., :32] if v_is_view else latent[..., :32].clone()
    _check(q, latent, v_cache, seq_lens)


@pytest.mark.parametrize("H", [16, 128])
def test_mla_real_dims(H):
    """DeepSeek-V3 absorbed decode: Dk = 576 = 512 + 64, Dv = 512; H = 128 spans 4 head tiles."""
    q, latent, seq_lens = _mla_inputs(B=2, H=H, s_max=160, d_latent=512, d_rope=64,
                                      dtype=torch.float16, seed=3)
    _check(q, latent, latent[..., :512], seq_lens, max_splits=2)


def test_head_dim_blocks_are_powers_of_two_and_dot_sized():
    for dk, dv in [(40, 32), (64, 64), (128, 128), (576, 512), (96, 96)]:
        block_dk, block_dr, block_dv = _head_dim_blocks(dk, dv)
        assert block_dk + (block_dr or 0) >= dk and block_dk <= dk and block_dv >= dv
        for block in (block_dk, block_dv) + ((block_dr,) if block_dr else ()):
            assert block >= 16 and block & (block - 1) == 0, (dk, dv, block)
    assert _head_dim_blocks(576, 512) == (512, 64, 512)


# ---- the merge inside the split kernel (counters: the last split of each head tile merges) -------

def _counters(B, H, S=1, short=False):
    return torch.zeros(counters_needed(B, H, S) - (counters_needed(B, H, S) - 1 if short else 0),
                       dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("lens,max_splits", [([1, 97, 300], 3), ([300, 300, 300], 5), ([64, 65, 1], 8)])
def test_merge_in_split_kernel_equals_merge_kernel(lens, max_splits):
    """Same answer as the separate merge kernel (to fp32 summation order) and the oracle, with some
    splits empty (short sequences exit before counting); the counters are zero again afterwards, and a
    second call (counters reused) gives the same bits."""
    q, k_cache, v_cache, seq_lens = _fp32_case(5, 8, 2, 300, 64, lens)
    cnt = _counters(len(lens), 8)
    two = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=max_splits)
    one = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=max_splits, counters=cnt)
    assert not cnt.any(), "the counters must be left zeroed"
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    again = decode_attention(q, k_cache, v_cache, seq_lens, 0.125, max_splits=max_splits, counters=cnt)
    assert torch.equal(one, again)
    _check(q, k_cache, v_cache, seq_lens, max_splits=max_splits, counters=cnt)


def test_merge_in_split_kernel_multi_token_mla_and_short_buffer():
    """S tokens causal by position, absorbed MLA (head tiles of a 576-wide latent), and a counter
    buffer too small for the grid (the merge kernel runs instead: same answer)."""
    for S in (1, 4):
        _check_multi(3, S, 4, 2, 64, 64, 300, torch.float32, seed=S, max_splits=3, min_tiles=1,
                     counters=_counters(3, 4, S))
    _check_multi(2, 3, 16, 1, 576, 512, 96, torch.float32, seed=7, mla=True, min_tiles=1, max_splits=3,
                 counters=_counters(2, 16, 3))
    q, k_cache, v_cache, seq_lens = _fp32_case(6, 8, 2, 300, 64, [5, 300])
    short = _counters(2, 8, short=True)
    _check(q, k_cache, v_cache, seq_lens, max_splits=3, counters=short)
    assert not short.any()


@needs_cuda
def test_cuda_graph_replay_with_merged_splits():
    """The one-kernel merge captured in a graph and replayed after seq_lens moved: counters reset
    themselves between replays."""
    torch.manual_seed(8)
    B, H, Hkv, s_max, D = 3, 32, 8, 2048, 128
    q = torch.randn(B, H, D, device=DEVICE, dtype=torch.bfloat16)
    k_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    seq_lens = torch.full((B,), 5, dtype=torch.int32, device=DEVICE)
    cnt = _counters(B, H)
    decode_attention(q, k_cache, v_cache, seq_lens, D ** -0.5, counters=cnt)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k_cache, v_cache, seq_lens, D ** -0.5, counters=cnt)
    for lens in ([1, 2048, 700], [300, 9, 1500]):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        ref = decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), seq_lens, D ** -0.5)
        assert (out.double() - ref).abs().max() / ref.abs().max() <= TOL[torch.bfloat16]
    assert not cnt.any()


@needs_cuda
def test_cuda_graph_replay_follows_new_seq_lens():
    """Captured once, replayed after seq_lens changed on the device: no host sync, no stale plan."""
    torch.manual_seed(4)
    B, H, Hkv, s_max, D = 4, 8, 2, 2048, 128
    q = torch.randn(B, H, D, device=DEVICE, dtype=torch.bfloat16)
    k_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    seq_lens = torch.full((B,), 5, dtype=torch.int32, device=DEVICE)
    scale = D ** -0.5
    decode_attention(q, k_cache, v_cache, seq_lens, scale)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k_cache, v_cache, seq_lens, scale)
    seq_lens.copy_(torch.tensor([1, 2048, 700, 1300], dtype=torch.int32))
    graph.replay()
    ref = decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), seq_lens, scale)
    assert (out.double() - ref).abs().max() / ref.abs().max() <= TOL[torch.bfloat16]


# ---- several new tokens per sequence (speculative verification, ragged appends) ------------------

def _check_multi(B, S, H, Hkv, dk, dv, s_max, dtype, seed, mla=False, **kw):
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(B, s_max, Hkv, dk, generator=g).to(dtype).to(DEVICE)
    v_cache = k_cache[..., :dv] if mla else torch.randn(B, s_max, Hkv, dv, generator=g).to(dtype).to(DEVICE)
    # each sequence holds `old` entries and appends S, so seq_lens = old + S; the first sequence
    # starts empty (its first token sees only itself), the last one fills the cache
    old = torch.randint(0, s_max - S + 1, (B,), generator=g)
    old[0], old[-1] = 0, s_max - S
    seq_lens = (old + S).to(torch.int32).to(DEVICE)
    positions = (old[:, None] + torch.arange(S)).to(DEVICE)                  # [B, S] int64
    if not mla:
        _poison_tail(k_cache, seq_lens)
        _poison_tail(v_cache, seq_lens)
    q = torch.randn(B, S, H, dk, generator=g).to(dtype).to(DEVICE)
    scale = dk ** -0.5
    out = decode_attention(q, k_cache, v_cache, seq_lens, scale, positions=positions, **kw)
    ref = decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), seq_lens, scale, positions)
    assert out.shape == (B, S, H, dv) and out.dtype == dtype
    assert not out.isnan().any()
    err = (out.double() - ref.double()).abs().max() / ref.double().abs().max()
    assert err <= TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [2, 5])
@pytest.mark.parametrize("H,Hkv,D", [(4, 2, 64), (4, 4, 32), (6, 1, 64)])
@pytest.mark.parametrize("max_splits", [None, 1, 3])
def test_multi_token_causal_by_position(H, Hkv, D, S, dtype, max_splits):
    """S new tokens per sequence: token s sees positions <= its own, across splits (a split may hold
    positions only later tokens see: its rows must weigh nothing) and with one split."""
    _check_multi(3, S, H, Hkv, D, D, 300, dtype, seed=H * S + D, max_splits=max_splits, min_tiles=1)


@pytest.mark.parametrize("S", [1, 3])
def test_multi_token_mla_latent(S):
    """Absorbed MLA shape: one 576-wide latent head, V its first 512 columns, 16 heads x S rows."""
    _check_multi(2, S, 16, 1, 576, 512, 96, torch.float32, seed=S, mla=True, min_tiles=1)


def test_one_token_with_positions_equals_plain_decode():
    torch.manual_seed(3)
    B, s_max, H, Hkv, D = 3, 200, 4, 2, 64
    k_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE)
    v_cache = torch.randn(B, s_max, Hkv, D, device=DEVICE)
    seq_lens = torch.tensor([1, 77, 200], dtype=torch.int32, device=DEVICE)
    q = torch.randn(B, H, D, device=DEVICE)
    plain = decode_attention(q, k_cache, v_cache, seq_lens, 0.125)
    multi = decode_attention(q[:, None], k_cache, v_cache, seq_lens, 0.125,
                             positions=(seq_lens.long() - 1)[:, None])[:, 0]
    torch.testing.assert_close(multi, plain, rtol=1e-6, atol=1e-6)
