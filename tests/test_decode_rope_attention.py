"""Guards the fused q/k norm + rope + cache write + split attention (kernels/decode_rope_attention.py) against the two
launches it replaces (kernels/rope.py's `qkv_rope_cache`, then kernels/decode_attention.py's `decode_attention`) and
the PyTorch twin of both (ops.qkv_rope_cache_torch, then softmax attention over the cache): the same cache bytes at the
new position, nothing else in the cache touched, and the same attention output, for every q/k norm, both rope layouts,
the clip, GQA group sizes 1 / 4 / 8, ragged sequence lengths (1 token, a partial tile, a full cache), one split and
many, and a stale (NaN) cache slot at the new position and past it."""

import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels import decode_attention as dattn  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402
from minimoe.kernels.decode_rope_attention import decode_rope_attention, usable  # noqa: E402
from minimoe.kernels.rope import qkv_rope_cache  # noqa: E402
from minimoe.ops import qkv_rope_cache_torch  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _case(B, H, Hkv, d, s_max, lens, qk_norm, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)  # noqa: E731
    qkv = rnd(B, 1, (H + 2 * Hkv) * d)
    k_cache, v_cache = rnd(B, s_max, Hkv, d), rnd(B, s_max, Hkv, d)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    positions = (seq_lens - 1).long()[:, None]
    for b, n in enumerate(lens):                      # the new slot and everything past it: stale, NaN
        k_cache[b, n - 1:] = float("nan")
        v_cache[b, n - 1:] = float("nan")
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(s_max, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().float().to(DEVICE), ang.sin().float().to(DEVICE)
    wq = wk = None
    if qk_norm == "full":
        wq, wk = (1 + 0.3 * torch.rand(H * d, generator=gen)).to(dtype), (1 + 0.3 * torch.rand(Hkv * d, generator=gen)).to(dtype)
    elif qk_norm == "head":
        wq, wk = (1 + 0.3 * torch.rand(d, generator=gen)).to(dtype), (1 + 0.3 * torch.rand(d, generator=gen)).to(dtype)
    wq = wq.to(DEVICE) if wq is not None else None
    wk = wk.to(DEVICE) if wk is not None else None
    return qkv, positions, seq_lens, cos, sin, k_cache, v_cache, wq, wk


def _attention_torch(q, k_cache, v_cache, lens, scale):
    """q [B, H, d] against each sequence's first lens[b] cache rows, float64 -> [B, H, d]."""
    B, H, d = q.shape
    G = H // k_cache.shape[2]
    out = torch.empty(B, H, d, dtype=torch.float64, device=q.device)
    for b, n in enumerate(lens):
        k = k_cache[b, :n].double().repeat_interleave(G, dim=1)      # [n, H, d]
        v = v_cache[b, :n].double().repeat_interleave(G, dim=1)
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[b].double(), k) * scale, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", p, v)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm,clip,interleave", [(None, None, False), ("head", None, False),
                                                      ("full", 0.8, False), (None, None, True), ("head", None, True)])
@pytest.mark.parametrize("H,Hkv,d,s_max,lens,splits", [
    (8, 1, 32, 200, [1, 130, 200], None),        # G 8: 16-row tile; one token, a partial tile, the full cache
    (4, 4, 64, 150, [77], None),                 # MHA (OLMoE-like), one sequence
    (16, 4, 32, 300, [300, 5], 1),               # one split (DIRECT), no merge
    (6, 2, 16, 129, [64, 65], 8)])               # a new position on a tile edge, many splits
def test_equals_rope_then_attention(H, Hkv, d, s_max, lens, splits, qk_norm, clip, interleave, dtype):
    B = len(lens)
    case = _case(B, H, Hkv, d, s_max, lens, qk_norm, dtype, seed=H * d + s_max)
    qkv, positions, seq_lens, cos, sin, k_cache, v_cache, wq, wk = case
    kw = dict(qk_norm=qk_norm, q_norm_w=wq, k_norm_w=wk, eps=1e-6, interleave=interleave, clip_qkv=clip)
    scale = d ** -0.5
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = qkv_rope_cache(qkv, positions, cos, sin, k_ref, v_ref, H, Hkv, d, **kw)
    ref = decode_attention(q[:, 0], k_ref, v_ref, seq_lens, scale, max_splits=splits, min_tiles=1)
    k_tw, v_tw = k_cache.clone(), v_cache.clone()
    q_tw = qkv_rope_cache_torch(qkv, positions, cos, sin, k_tw, v_tw, H, Hkv, d, **kw)
    out = decode_rope_attention(qkv, positions, seq_lens, cos, sin, k_cache, v_cache, H, Hkv, d, scale, **kw,
                                max_splits=splits, min_tiles=1)
    assert out.shape == (B, H, d) and out.dtype == dtype
    for b, n in enumerate(lens):       # the new slot holds the rope kernel's bytes; the slots past it are untouched
        assert torch.equal(k_cache[b, n - 1], k_ref[b, n - 1]) and torch.equal(v_cache[b, n - 1], v_ref[b, n - 1])
        assert torch.equal(k_cache[b, :n - 1], k_ref[b, :n - 1]) and k_cache[b, n:].isnan().all()
        assert v_cache[b, n:].isnan().all()
    assert torch.isfinite(out).all()
    err = (out.double() - ref.double()).abs().max().item()
    assert err <= TOL[dtype] * max(1.0, ref.double().abs().max().item()), err
    twin = _attention_torch(q_tw[:, 0], k_tw, v_tw, lens, scale)
    err_tw = (out.double() - twin).abs().max().item()
    assert err_tw <= 4 * TOL[dtype] * max(1.0, twin.abs().max().item()), err_tw


def test_early_tile_and_the_loop_agree(monkeypatch):
    """decode_attention.EARLY_TILE governs the fused kernel's one-tile splits too: with it off the kernel walks its
    loop; both give the same output bits and cache bytes."""
    lens = [1, 100, 256]
    case = _case(3, 8, 2, 32, 256, lens, "head", torch.float32, seed=7)
    qkv, positions, seq_lens, cos, sin, k_cache, v_cache, wq, wk = case
    kw = dict(qk_norm="head", q_norm_w=wq, k_norm_w=wk)
    outs, caches = [], []
    for early in (False, True):
        monkeypatch.setattr(dattn, "EARLY_TILE", early)
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(decode_rope_attention(qkv, positions, seq_lens, cos, sin, kc, vc, 8, 2, 32, 0.2, **kw,
                                          min_tiles=1))
        caches.append((kc, vc))
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) for a, b in zip(*caches))


def test_usable_and_refusals():
    assert usable(1, 1, 32, 4, 128, torch.bfloat16, torch.bfloat16)
    assert not usable(1, 2, 32, 4, 128, torch.bfloat16, torch.bfloat16)          # two new tokens
    assert not usable(1, 1, 32, 4, 96, torch.bfloat16, torch.bfloat16)           # head dim not a power of two
    assert not usable(1, 1, 32, 4, 128, torch.bfloat16, torch.float16)           # cache in another dtype
    assert not usable(1, 1, 512, 2, 64, torch.float16, torch.float16)            # 256 query heads a kv head
    case = _case(1, 4, 4, 32, 64, [3], None, torch.float32, seed=1)
    qkv, positions, seq_lens, cos, sin, k_cache, v_cache, _, _ = case
    with pytest.raises(ValueError, match="outside what the fused kernel runs"):
        decode_rope_attention(qkv.expand(1, 2, -1), positions, seq_lens, cos, sin, k_cache, v_cache, 4, 4, 32, 0.1)
