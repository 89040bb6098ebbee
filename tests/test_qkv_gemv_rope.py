"""Guards `--fuse-rope` (rope_fusion.py, kernels/qkv_gemv_rope.py): the q/k/v GEMV with rope and the cache write in its
epilogue gives the bits of the unfused pair (dense_gemv, then rope.qkv_rope_cache) and of a float64 reference within
rounding, on awkward shapes; runs only where it fits; and refuses bad input before any launch."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import rope_fusion  # noqa: E402
from minimoe.kernels.dense_gemv import dense_gemv  # noqa: E402
from minimoe.kernels.qkv_gemv_rope import pair_block, qkv_gemv_rope  # noqa: E402
from minimoe.kernels.rope import qkv_rope_cache  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = {
    # name: (B, S, D, H, Hkv, d, interleave, bias)
    "gqa_rotate_half": (1, 1, 64, 4, 2, 16, False, False),
    "mha_bias_two_sequences": (2, 1, 48, 3, 3, 16, False, True),
    "interleaved_d24": (1, 1, 40, 2, 1, 24, True, False),      # pair_block(24, 16) = 8: a head of 3 tiles
    "three_tokens_d8": (1, 3, 72, 4, 1, 8, False, True),       # one tile per head; S > 1 (a chunk appended)
    "d_not_power_of_two_long_k": (1, 1, 300, 2, 2, 12, False, True),   # pair_block(12, 16) = 4; K not a tile multiple
}


def make(B, S, D, H, Hkv, d, bias, dtype, seed=0, P=40):
    gen = torch.Generator().manual_seed(seed)
    N = (H + 2 * Hkv) * d
    x = torch.randn(B, S, D, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(N, D, generator=gen) * D ** -0.5).to(DEVICE, dtype)
    b = (0.1 * torch.randn(N, generator=gen)).to(DEVICE, dtype) if bias else None
    angles = torch.rand(P, d // 2, generator=gen) * 6.0
    cos, sin = angles.cos().to(DEVICE), angles.sin().to(DEVICE)
    pos = torch.stack([torch.randperm(P, generator=gen)[:S] for _ in range(B)]).to(DEVICE)     # ragged, unordered
    caches = [torch.full((B, P, Hkv, d), 7.0, dtype=dtype, device=DEVICE) for _ in range(2)]
    return x, w, b, pos, cos, sin, caches


def reference(x, w, b, pos, cos, sin, H, Hkv, d, interleave):
    """(q, k, v) in float64 from the rounded projection: y = x Wᵀ + b, rotated pairwise."""
    y = x.double() @ w.double().T + (0 if b is None else b.double())
    return rotate(y.to(x.dtype).double(), pos, cos, sin, H, Hkv, d, interleave)  # the projection's output dtype


def rotate(y, pos, cos, sin, H, Hkv, d, interleave):
    """y [B, S, (H + 2 Hkv) d] float64 -> (q, k rotated at positions pos, v), float64."""
    B, S, _ = y.shape
    q, k, v = y.view(B, S, H + 2 * Hkv, d).split([H, Hkv, Hkv], dim=2)
    c, s = cos.double()[pos][:, :, None], sin.double()[pos][:, :, None]  # [B, S, 1, d/2]

    def rot(t):
        x1, x2 = (t[..., 0::2], t[..., 1::2]) if interleave else t.chunk(2, dim=-1)
        o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s
        return torch.stack([o1, o2], dim=-1).flatten(-2) if interleave else torch.cat([o1, o2], dim=-1)
    return rot(q), rot(k), v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_unfused_pair_and_reference(case, dtype):
    B, S, D, H, Hkv, d, inter, bias = CASES[case]
    x, w, b, pos, cos, sin, (kc, vc) = make(B, S, D, H, Hkv, d, bias, dtype, seed=len(case))
    q = qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, H, Hkv, d, bias=b, interleave=inter)
    # the unfused pair with the same GEMV tile: the same bits
    kc2, vc2 = torch.full_like(kc, 7.0), torch.full_like(vc, 7.0)
    N = (H + 2 * Hkv) * d
    qkv = dense_gemv(x.reshape(-1, D), w, bias=b, config={"BLOCK_N": pair_block(d, 16)}).view(B, S, N)
    q2 = qkv_rope_cache(qkv, pos, cos, sin, kc2, vc2, H, Hkv, d, interleave=inter)
    assert torch.equal(q, q2) and torch.equal(kc, kc2) and torch.equal(vc, vc2)
    # against float64, and nothing written outside this step's positions
    rq, rk, rv = reference(x, w, b, pos, cos, sin, H, Hkv, d, inter)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    rows = torch.arange(B, device=DEVICE)[:, None]
    for got, want in ((q, rq), (kc[rows, pos], rk), (vc[rows, pos], rv)):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= tol
    untouched = torch.ones(kc.shape[:2], dtype=torch.bool, device=DEVICE)
    untouched[rows, pos] = False
    assert (kc[untouched] == 7.0).all() and (vc[untouched] == 7.0).all()


def test_pair_block():
    assert pair_block(128, 8) == 8 and pair_block(128, 16) == 16 and pair_block(24, 16) == 8
    assert pair_block(12, 16) == 4 and pair_block(128, 6) == 8 and pair_block(7, 16) == 0 and pair_block(2, 16) == 2


def test_kernel_refuses_bad_input():
    x, w, b, pos, cos, sin, (kc, vc) = make(1, 1, 64, 4, 2, 16, True, torch.float32)
    with pytest.raises(ValueError, match="W .* is not a contiguous"):
        qkv_gemv_rope(x, w[:-1], pos, cos, sin, kc, vc, 4, 2, 16)
    with pytest.raises(ValueError, match="W .* in x's dtype"):
        qkv_gemv_rope(x, w.double(), pos, cos, sin, kc, vc, 4, 2, 16)
    with pytest.raises(ValueError, match="bias"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, 4, 2, 16, bias=b[:-1])
    with pytest.raises(ValueError, match="positions"):
        qkv_gemv_rope(x, w, pos.float(), cos, sin, kc, vc, 4, 2, 16)
    with pytest.raises(ValueError, match="cos / sin"):
        qkv_gemv_rope(x, w, pos, cos.double(), sin, kc, vc, 4, 2, 16)
    with pytest.raises(ValueError, match="k_cache"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc[:, :, :1], vc, 4, 2, 16)
    with pytest.raises(ValueError, match="v_cache .* in x's dtype"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc.half(), 4, 2, 16)
    xo, wo, _, po, co, so, (ko, vo) = make(1, 1, 64, 2, 1, 14, False, torch.float32)
    assert pair_block(14, 16) == 2                                   # 14 = 2 x 7: pairs of 2 rows still fit
    qkv_gemv_rope(xo, wo, po, co, so, ko, vo, 2, 1, 14)


@pytest.mark.parametrize("card", ["mixtral-tiny", "qwen2-moe-tiny"])
def test_model_fused_rope_equals_apart(card, monkeypatch):
    """Mixtral (GQA) and Qwen2-MoE (q/k/v bias) end to end: the same greedy tokens and logits, fused at batch 1 only."""
    runs = []
    real_run = rope_fusion.run
    monkeypatch.setattr(rope_fusion, "run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    s = RunSettings(device=DEVICE, ops="triton", gemv="stream", fuse_rope="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert runs == []
        s.fuse_rope = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.fuse_rope = "off"
        assert bool(runs) == (batch.shape[0] <= rope_fusion.MAX_T) and set(runs) <= {1}
        runs.clear()
        if DEVICE == "cpu":      # the same roundings and tiles: the same bits
            assert torch.equal(fused_logits, apart_logits)
        else:                    # a GPU's dense tile for these tiny widths is wider than a head: another sum order
            err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
            assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)


def test_fits_only_where_it_can_run():
    from minimoe.kv_cache import KVCache
    s = RunSettings(device=DEVICE, ops="triton", gemv="stream").resolve()
    assert s.fuse_rope == "on"
    model, cfg, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 1, 8, torch.float32, DEVICE)
    attn = model.layers[0].attn
    x = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    assert rope_fusion.fits(attn, x, cache)
    assert rope_fusion.fits(attn, torch.randn(3, 5, cfg.hidden_size, device=DEVICE)[1:2, -1:], cache)  # a strided row
    assert not rope_fusion.fits(attn, torch.randn(2, 1, cfg.hidden_size, device=DEVICE), cache)      # batch 2
    assert not rope_fusion.fits(attn, torch.randn(1, 2, cfg.hidden_size, device=DEVICE), cache)      # a chunk
    assert not rope_fusion.fits(attn, x.half(), cache)
    assert not rope_fusion.fits(attn, x, KVCache(cfg, 1, 8, torch.float16, DEVICE))                   # another cache dtype
    hook = attn.wqkv.register_forward_hook(lambda *a: None)    # a TP plan's q/k norm, calibration
    assert not rope_fusion.fits(attn, x, cache)
    hook.remove()
    s.fuse_rope = "off"
    assert not rope_fusion.fits(attn, x, cache)
    s.fuse_rope = "on"
    for card in ("olmoe-tiny", "qwen3-moe-tiny"):              # q/k norms: whole projection / whole head
        m, c, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
        assert not rope_fusion.fits(m.layers[0].attn, torch.randn(1, 1, c.hidden_size, device=DEVICE),
                                    KVCache(c, 1, 8, torch.float32, DEVICE))


def test_settings_resolution():
    assert RunSettings(device="cpu", ops="triton", gemv="stream").resolve().fuse_rope == "on"
    assert RunSettings(device="cpu", ops="triton", gemv="torch").resolve().fuse_rope == "off"
    assert RunSettings(device="cpu", ops="triton").resolve().fuse_rope == "off"     # --gemv auto is torch on a CPU
    assert RunSettings(device="cpu").resolve().fuse_rope == "off"                   # the CPU defaults: torch ops
    on = RunSettings(device="cpu", ops="triton", fuse_rope="on").resolve()           # asked for: its own GEMV
    assert on.fuse_rope == "on" and on.gemv == "torch"
    assert on.resolve() == on                                                        # resolving is idempotent
    for bad in (dict(ops="torch", gemv="stream"), dict(ops="torch")):
        with pytest.raises(ValueError, match="--fuse-rope on .*got --ops torch"):
            RunSettings(device="cpu", fuse_rope="on", **bad).resolve()
    with pytest.raises(ValueError, match="--fuse-rope yes"):
        RunSettings(fuse_rope="yes").resolve()
