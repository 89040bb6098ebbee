"""Guards the residual add + RMSNorm folded into `--fuse-rope`'s q/k/v GEMV (kernels/qkv_gemv_rope.py's `norm`,
norm_fusion.WITH_ROPE): the kernel gives the unfused norm's residual stream bit for bit, q and the cache rows of a
float64 oracle of its formula within rounding, and the norm -> fused GEMV within one rounding of h; it refuses bad
norm inputs; in a model (Mixtral, Qwen2-MoE with its q/k/v bias) the same greedy tokens and fp32 logits as the norm
kernel + `--fuse-rope`, folded at batch 1 in every layer; `fits` takes it only with WITH_ROPE (on by default), and never
with the embedding gather."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import norm_fusion, rope_fusion  # noqa: E402
from minimoe.kernels.qkv_gemv_rope import qkv_gemv_rope  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.ops import rms_norm_torch  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402
from test_qkv_gemv_rope import make as make_rope, rotate  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

CASES = {
    # name: (B, S, D, H, Hkv, d, interleave, bias, residual)
    "gqa_rotate_half": (1, 1, 64, 4, 2, 16, False, False, True),
    "bias_no_residual": (1, 1, 48, 3, 3, 16, False, True, False),           # a first layer: s = x
    "interleaved_long_k": (1, 1, 300, 2, 1, 24, True, True, True),          # K not a tile multiple
    "two_sequences": (2, 1, 72, 4, 1, 8, False, False, True),
}


def make(B, S, D, H, Hkv, d, bias, dtype, seed=0, P=40):
    """test_qkv_gemv_rope's inputs, with a residual [B, S, D] and a norm weight g [D] beside them."""
    x, w, b, pos, cos, sin, caches = make_rope(B, S, D, H, Hkv, d, bias, dtype, seed, P)
    gen = torch.Generator().manual_seed(seed + 1000)
    res = torch.randn(B, S, D, generator=gen).to(DEVICE, dtype)
    g = (1.0 + 0.2 * torch.randn(D, generator=gen)).to(DEVICE, dtype)
    return x, res, g, w, b, pos, cos, sin, caches


def oracle(s, g, w, b, pos, cos, sin, H, Hkv, d, interleave):
    """(q, k, v) in float64 of the fold's formula: y = (W · (g ⊙ s)) / rms(s) + b, rounded, rotated pairwise."""
    sd = s.double()
    inv = torch.rsqrt(sd.pow(2).mean(-1, keepdim=True) + EPS)
    y = (sd * g.double()) @ w.double().T * inv + (0 if b is None else b.double())
    return rotate(y.to(s.dtype).double(), pos, cos, sin, H, Hkv, d, interleave)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_oracle_and_unfused(case, dtype):
    B, S, D, H, Hkv, d, inter, bias, has_res = CASES[case]
    x, res, g, w, b, pos, cos, sin, (kc, vc) = make(B, S, D, H, Hkv, d, bias, dtype, seed=len(case))
    res = res if has_res else None
    q, s = qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, H, Hkv, d, bias=b, interleave=inter, norm=(res, g, EPS))
    h, s_ref = rms_norm_torch(x, g, EPS, res)                     # the unfused norm: its residual stream, bit for bit
    assert torch.equal(s, x if res is None else s_ref) and (res is not None or s is x)
    rows = torch.arange(B, device=DEVICE)[:, None]
    rq, rk, rv = oracle(s, g, w, b, pos, cos, sin, H, Hkv, d, inter)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for got, want in ((q, rq), (kc[rows, pos], rk), (vc[rows, pos], rv)):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= tol
    untouched = torch.ones(kc.shape[:2], dtype=torch.bool, device=DEVICE)
    untouched[rows, pos] = False
    assert (kc[untouched] == 7.0).all() and (vc[untouched] == 7.0).all()
    # the unfused pair (norm, then the fused GEMV + rope) differs only by h's rounding: one rounding in fp16
    kc2, vc2 = torch.full_like(kc, 7.0), torch.full_like(vc, 7.0)
    q2 = qkv_gemv_rope(h, w, pos, cos, sin, kc2, vc2, H, Hkv, d, bias=b, interleave=inter)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for got, want in ((q, q2), (kc, kc2), (vc, vc2)):
        assert ((got.double() - want.double()).abs().max() / want.double().abs().max()).item() <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_programs_storing_several_chunks_chunked_steps_and_strided_rows(dtype):
    """Tiles where a token's programs (3) are fewer than the row's chunks (13 of 16 on D = 200), S = 3 tokens a
    sequence, and x rows strided inside a wider tensor: the residual stream still comes out whole, bit for bit, and q
    and the cache rows as the oracle's."""
    B, S, D, H, Hkv, d = 2, 3, 200, 1, 1, 16
    x, res, g, w, b, pos, cos, sin, (kc, vc) = make(B, S, D, H, Hkv, d, True, dtype, seed=9)
    wide = torch.zeros(B, S, D + 24, dtype=dtype, device=DEVICE)
    wide[..., :D] = x
    xs = wide[..., :D]                                              # row stride D + 24
    q, s = qkv_gemv_rope(xs, w, pos, cos, sin, kc, vc, H, Hkv, d, bias=b, norm=(res, g, EPS),
                         config={"BLOCK_N": 16, "BLOCK_K": 16})
    _, s_ref = rms_norm_torch(x, g, EPS, res)
    assert torch.equal(s, s_ref)
    rq, rk, rv = oracle(s, g, w, b, pos, cos, sin, H, Hkv, d, False)
    rows = torch.arange(B, device=DEVICE)[:, None]
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for got, want in ((q, rq), (kc[rows, pos], rk), (vc[rows, pos], rv)):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= tol


def test_kernel_refuses_bad_norm_input():
    x, res, g, w, b, pos, cos, sin, (kc, vc) = make(1, 1, 64, 4, 2, 16, False, torch.float32)
    with pytest.raises(ValueError, match="norm weight"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, 4, 2, 16, norm=(res, g[:-1], EPS))
    with pytest.raises(ValueError, match="norm weight"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, 4, 2, 16, norm=(res, g.half(), EPS))
    with pytest.raises(ValueError, match="residual"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, 4, 2, 16, norm=(res.half(), g, EPS))
    with pytest.raises(ValueError, match="residual"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, 4, 2, 16, norm=(res[..., :32], g, EPS))
    with pytest.raises(ValueError, match="norm weight"):
        qkv_gemv_rope(x, w, pos, cos, sin, kc, vc, 4, 2, 16, norm=(res, torch.stack([g, g], 1)[:, 0], EPS))


@pytest.mark.parametrize("card", ["mixtral-tiny", "qwen2-moe-tiny"])
def test_model_fold_into_rope_equals_apart(card, monkeypatch):
    """End to end with --fuse-rope and --fold-attn-norm on: WITH_ROPE folds every layer's norm into the rope kernel at
    batch 1 (not at batch 2), with the norm kernel + fused GEMV's tokens and fp32 logits within rounding."""
    folds = []
    real = rope_fusion.run
    monkeypatch.setattr(rope_fusion, "run", lambda *a, **k: (folds.append(1) if k.get("norm") else None)
                        or real(*a, **k))
    s = RunSettings(device=DEVICE, ops="triton", gemv="stream", fuse_rope="on", fold_attn_norm="on").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        monkeypatch.setattr(norm_fusion, "WITH_ROPE", False)
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert folds == []
        monkeypatch.setattr(norm_fusion, "WITH_ROPE", True)
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        if batch.shape[0] == 1:        # every layer of every one-token step (greedy_and_logits runs several)
            assert len(folds) >= cfg.n_layers * 3 and len(folds) % cfg.n_layers == 0, folds
        else:
            assert folds == []
        folds.clear()
        err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
        assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)


def test_fits_takes_the_rope_layer_only_with_the_knob(monkeypatch):
    from minimoe.kv_cache import KVCache, Step
    s = RunSettings(device=DEVICE, ops="triton", gemv="stream", fuse_rope="on", fold_attn_norm="on").resolve()
    model, cfg, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 1, 8, torch.float32, DEVICE)
    step = cache.step(1, 1)
    assert isinstance(step, Step) and not step.fresh
    block = model.layers[0]
    x = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    assert rope_fusion.fits(block.attn, x, cache)
    assert norm_fusion.WITH_ROPE and norm_fusion.fits(block, x, x, step, cache)    # on by default
    monkeypatch.setattr(norm_fusion, "WITH_ROPE", False)
    assert not norm_fusion.fits(block, x, x, step, cache)                 # the knob off: --fuse-rope keeps the layer
    monkeypatch.setattr(norm_fusion, "WITH_ROPE", True)
    ids = torch.zeros(1, 1, dtype=torch.int64, device=DEVICE)
    assert not norm_fusion.embed_fits(model, ids, step, cache)           # no gather in the rope kernel's norm
