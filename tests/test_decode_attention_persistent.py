"""The persistent decode-attention kernel (kernels/decode_attention_persistent.py) against the oracle and the split
kernel: ragged lengths, NaN tails, items that do not divide the programs, GQA and MHA, a CUDA-graph replay."""

import pytest
import torch

pytest.importorskip("triton")

import minimoe.kernels.decode_attention as dattn  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402
from minimoe.kernels.decode_attention_persistent import persistent_grid  # noqa: E402
from minimoe.kernels.decode_attention_ref import decode_attention_ref  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}  # max|err| / max|ref|
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])


def _inputs(B, H, hkv, d, s_max, dtype, seed, lens=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H + 2, d, generator=g).to(DEVICE, dtype)[:, 1:1 + H]     # a strided view, as in the engine
    k_cache = torch.randn(B, s_max, hkv, d, generator=g).to(DEVICE, dtype)
    v_cache = torch.randn(B, hkv, s_max, d, generator=g).to(DEVICE, dtype).transpose(1, 2)   # any strides
    if lens is None:
        lens = torch.randint(1, s_max + 1, (B,), generator=g)
        lens[0], lens[-1] = 1, s_max
    seq_lens = torch.as_tensor(lens, dtype=torch.int32).to(DEVICE)
    for b, n in enumerate(seq_lens.tolist()):                     # positions past a length must never be read
        k_cache[b, n:] = float("nan")
        v_cache[b, n:] = float("nan")
    return q, k_cache, v_cache, seq_lens


def _persistent_on(monkeypatch, sms=4, per_sm=2):
    """PERSISTENT on, with a small machine so that a CPU-sized batch fills it (B x Hkv >= 2 x sms programs)."""
    launched = []
    real = dattn._decode_persistent_kernel

    class Spy:
        def __getitem__(self, grid):
            return lambda *a, **k: launched.append((grid, k["ITEMS"])) or real[grid](*a, **k)

    monkeypatch.setattr(dattn, "PERSISTENT", True)
    monkeypatch.setattr(dattn, "PERSISTENT_PROGRAMS_PER_SM", per_sm)
    monkeypatch.setattr(dattn, "_sm_count", lambda device: sms)
    monkeypatch.setattr(dattn, "_decode_persistent_kernel", Spy())
    return launched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, hkv, d, s_max", [(5, 4, 4, 32, 150), (6, 8, 2, 64, 70), (3, 16, 2, 16, 64),
                                                  (7, 3, 3, 32, 1)])
def test_persistent_equals_oracle(monkeypatch, B, H, hkv, d, s_max, dtype):
    """MHA and GQA, ragged lengths (1 and S_max always present), items that do not divide the programs evenly."""
    q, k_cache, v_cache, seq_lens = _inputs(B, H, hkv, d, s_max, dtype, seed=B * H + d)
    launched = _persistent_on(monkeypatch)
    out = decode_attention(q, k_cache, v_cache, seq_lens, d ** -0.5)
    assert len(launched) == 1, "the persistent kernel did not run"
    ref = decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), seq_lens, d ** -0.5)
    assert out.shape == (B, H, d) and out.dtype == dtype
    assert not out.isnan().any(), "NaN leaked from cache positions beyond seq_lens"
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err <= TOL[dtype], f"relative error {err:.2e}"


def test_persistent_equals_split_kernel_fp32(monkeypatch):
    """Same arithmetic per tile as the one-split kernel: fp32 results agree to rounding."""
    q, k_cache, v_cache, seq_lens = _inputs(9, 4, 4, 32, 200, torch.float32, seed=3)
    monkeypatch.setattr(dattn, "_sm_count", lambda device: 4)
    split = decode_attention(q, k_cache, v_cache, seq_lens, 0.2)
    _persistent_on(monkeypatch)
    torch.testing.assert_close(decode_attention(q, k_cache, v_cache, seq_lens, 0.2), split, atol=2e-5, rtol=2e-5)


def test_equal_lengths_and_one_program_per_item(monkeypatch):
    """Every sequence as long as the cache (no masked tile) and programs_per_sm large enough for one item each."""
    q, k_cache, v_cache, seq_lens = _inputs(4, 4, 4, 32, 130, torch.float32, seed=5, lens=[130] * 4)
    launched = _persistent_on(monkeypatch, sms=4, per_sm=4)
    out = decode_attention(q, k_cache, v_cache, seq_lens, 0.1)
    assert launched[0][1] == 1                                 # 16 items on 16 slots
    torch.testing.assert_close(out, decode_attention_ref(q, k_cache, v_cache, seq_lens, 0.1), atol=1e-4, rtol=1e-4)


def test_small_grid_keeps_the_split_kernel(monkeypatch):
    """B x Hkv below the SMs' slots gets several splits, and the persistent kernel is not used even when on."""
    q, k_cache, v_cache, seq_lens = _inputs(2, 4, 2, 32, 512, torch.float32, seed=7)
    launched = _persistent_on(monkeypatch, sms=132)
    out = decode_attention(q, k_cache, v_cache, seq_lens, 0.2)
    assert launched == []
    torch.testing.assert_close(out, decode_attention_ref(q, k_cache, v_cache, seq_lens, 0.2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_items, sms, per_sm, want", [(1024, 132, 2, (256, 4)), (1024, 132, 3, (342, 3)),
                                                        (100, 132, 2, (100, 1)), (265, 132, 2, (133, 2))])
def test_persistent_grid_spreads_whole_items(n_items, sms, per_sm, want):
    programs, items = persistent_grid(n_items, sms, per_sm)
    assert (programs, items) == want
    assert programs <= max(1, per_sm * sms) or items == 1
    assert (programs - 1) * items < n_items <= programs * items        # no program without an item


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_persistent_graph_replay_follows_new_lengths(monkeypatch):
    """Captured once, replayed with other lengths: the tile count comes from seq_lens on the device."""
    monkeypatch.setattr(dattn, "PERSISTENT", True)
    B, H, hkv, d, s_max = 64, 16, 16, 128, 256
    q, k_cache, v_cache, seq_lens = _inputs(B, H, hkv, d, s_max, torch.bfloat16, seed=11, lens=[100] * B)
    k_cache.nan_to_num_(0.0)
    v_cache.nan_to_num_(0.0)
    decode_attention(q, k_cache, v_cache, seq_lens, d ** -0.5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k_cache, v_cache, seq_lens, d ** -0.5)
    for lens in ([1] * B, [256] * B, torch.randint(1, 257, (B,)).tolist()):
        seq_lens.copy_(torch.as_tensor(lens, dtype=torch.int32))
        graph.replay()
        ref = decode_attention_ref(q.double(), k_cache.double(), v_cache.double(), seq_lens, d ** -0.5)
        assert (out.double() - ref).abs().max() / ref.abs().max() <= TOL[torch.bfloat16]
