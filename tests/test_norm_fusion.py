"""Guards the attention-side `--fold-norm` (norm_fusion.py, kernels/norm_gemv.py): a GEMV that makes its RMSNorm (+
residual add) in its prologue gives the bits of the norm kernel then the GEMV (in the interpreter; within rounding on
a GPU) and of a float64 reference within rounding, on awkward shapes; the model folds at batch 1 only, in every
attention kind, with the same tokens and logits; `fits` says no where the fold cannot run; bad input is refused
before a launch."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import norm_fusion  # noqa: E402
from minimoe.kernels.dense_gemv import dense_gemv  # noqa: E402
from minimoe.kernels.norm_gemv import MAX_D, norm_gemv  # noqa: E402
from minimoe.kernels.qkv_gemv_rope import qkv_gemv_rope  # noqa: E402
from minimoe.kernels.rmsnorm import rms_norm  # noqa: E402
from minimoe.kv_cache import KVCache  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXACT = DEVICE == "cpu"     # the interpreter sums mean(s²) in one order in both kernels


def close(a, b, tol):
    err = ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
    assert err <= tol, err


CASES = {
    # name: (D, N, N2, residual, bias)
    "residual": (64, 48, 0, True, False),
    "first_layer_no_residual": (64, 40, 0, False, False),
    "ragged_n_and_d": (300, 37, 0, True, True),              # N not a tile multiple, D not a power of two
    "pair_like_mla": (96, 48, 20, True, False),               # q and latent in one launch, ragged second block
    "one_output": (33, 1, 0, True, True),
}


def make(D, N, N2, residual, bias, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (3.0 * torch.randn(1, D, generator=gen)).to(DEVICE, dtype)
    r = torch.randn(1, D, generator=gen).to(DEVICE, dtype) if residual else None
    g = (1.0 + 0.3 * torch.randn(D, generator=gen)).to(DEVICE, dtype)
    w = (torch.randn(N, D, generator=gen) * D ** -0.5).to(DEVICE, dtype)
    w2 = (torch.randn(N2, D, generator=gen) * D ** -0.5).to(DEVICE, dtype) if N2 else None
    b = (0.1 * torch.randn(N, generator=gen)).to(DEVICE, dtype) if bias else None
    return x, r, g, w, w2, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_norm_gemv_matches_norm_then_gemv(case, dtype):
    D, N, N2, residual, bias = CASES[case]
    eps = 1e-5
    x, r, g, w, w2, b = make(D, N, N2, residual, bias, dtype)
    y, s = norm_gemv(x, r, g, eps, w, second=w2, bias=b)
    h, s_ref = rms_norm(x, g, eps, r)                          # the unfused pair: norm kernel, then the GEMV
    y_ref = dense_gemv(h, w, bias=b, second=w2)
    assert y.shape == (1, N + N2) and y.dtype == dtype
    if r is None:
        assert s is x                                          # the first layer: the stream is x itself
    else:
        assert torch.equal(s, s_ref)                           # program 0 stored x + residual, rounded
    if EXACT:
        assert torch.equal(y, y_ref)
    else:
        close(y, y_ref, 2e-3 if dtype == torch.float16 else 1e-5)
    s64 = x.double() + (0 if r is None else r.double())      # float64 reference from the rounded stream
    h64 = g.double() * s64 / torch.sqrt(s64.pow(2).mean() + eps)
    ref = h64 @ torch.cat([w, w2]).double().T if w2 is not None else h64 @ w.double().T
    if b is not None:
        ref = ref + b.double()
    close(y, ref, 5e-3 if dtype == torch.float16 else 1e-5)


def test_norm_gemv_writes_the_stream_where_asked():
    x, r, g, w, _, _ = make(64, 16, 0, True, False, torch.float32, seed=4)
    out = torch.full_like(x, float("nan"))
    y, s = norm_gemv(x, r, g, 1e-6, w, residual_out=out)
    assert s is out and torch.equal(out, x + r)


@pytest.mark.parametrize("residual", [True, False])
def test_qkv_gemv_rope_with_norm_matches_norm_first(residual):
    gen = torch.Generator().manual_seed(7)
    D, H, Hkv, d, P = 80, 4, 2, 16, 12
    N = (H + 2 * Hkv) * d
    x = (2.0 * torch.randn(1, 1, D, generator=gen)).to(DEVICE)
    r = torch.randn(1, 1, D, generator=gen).to(DEVICE) if residual else None
    g = (1.0 + 0.3 * torch.randn(D, generator=gen)).to(DEVICE)
    w = (torch.randn(N, D, generator=gen) * D ** -0.5).to(DEVICE)
    angles = torch.rand(P, d // 2, generator=gen) * 6.0
    cos, sin = angles.cos().to(DEVICE), angles.sin().to(DEVICE)
    pos = torch.tensor([[5]], device=DEVICE)
    caches = [[torch.zeros(1, P, Hkv, d, device=DEVICE) for _ in range(2)] for _ in range(2)]
    res_out = torch.empty_like(x)
    q = qkv_gemv_rope(x, w, pos, cos, sin, *caches[0], H, Hkv, d, norm=(r, g, 1e-6, res_out))
    h, s_ref = rms_norm(x, g, 1e-6, r)
    q_ref = qkv_gemv_rope(h, w, pos, cos, sin, *caches[1], H, Hkv, d)
    if residual:
        assert torch.equal(res_out, s_ref)
    for got, want in ((q, q_ref), (caches[0][0], caches[1][0]), (caches[0][1], caches[1][1])):
        if EXACT:
            assert torch.equal(got, want)
        else:
            close(got, want, 1e-5)
    with pytest.raises(ValueError, match="one token"):
        qkv_gemv_rope(x.expand(2, 1, D).contiguous(), w, pos.expand(2, 1).contiguous(), cos, sin,
                      *[c.expand(2, -1, -1, -1).contiguous() for c in caches[0]], H, Hkv, d,
                      norm=(None, g, 1e-6, x))


def test_norm_gemv_refuses_bad_input():
    x, r, g, w, w2, b = make(64, 16, 8, True, True, torch.float32)
    with pytest.raises(ValueError, match="one contiguous row"):
        norm_gemv(x.expand(2, 64).contiguous(), None, g, 1e-6, w)
    with pytest.raises(ValueError, match="residual .* is not a contiguous row like x"):
        norm_gemv(x, r.half(), g, 1e-6, w)
    with pytest.raises(ValueError, match="norm weight"):
        norm_gemv(x, r, g[:32], 1e-6, w)
    with pytest.raises(ValueError, match="W .* is not a contiguous"):
        norm_gemv(x, r, g, 1e-6, w.T.contiguous()[:, :16].T)
    with pytest.raises(ValueError, match="second .* does not join W"):
        norm_gemv(x, r, g, 1e-6, w, second=w2, bias=b)
    with pytest.raises(ValueError, match="bias"):
        norm_gemv(x, r, g, 1e-6, w, bias=b[:3])
    wide = torch.zeros(1, MAX_D + 1, device=DEVICE)
    with pytest.raises(ValueError, match="holds the row in registers"):
        norm_gemv(wide, None, torch.ones(MAX_D + 1, device=DEVICE), 1e-6, torch.zeros(2, MAX_D + 1, device=DEVICE))


# every attention kind: the rope-fused GEMV (Mixtral GQA; Qwen2 with q/k/v bias), the q/k/v stream GEMV before the q/k
# norm kernel (OLMoE's whole-projection norm, Qwen3's per-head norm), MLA's joined pair (V2-Lite: q; V3: q LoRA-down)
CARDS = {"mixtral-tiny": "norm+qkv+rope", "qwen2-moe-tiny": "norm+qkv+rope", "olmoe-tiny": "norm+qkv",
         "qwen3-moe-tiny": "norm+qkv", "deepseek-v2-lite-tiny": "norm+q+latent", "deepseek-v3-tiny": "norm+q+latent"}


@pytest.mark.parametrize("card", sorted(CARDS))
def test_model_folded_equals_apart(card, monkeypatch):
    """End to end, greedy tokens and first-step logits with the attention norm folded and not; it folds at batch 1
    only, in every layer, through the projection this family uses."""
    made = []
    real = norm_fusion.Deferred.__init__

    def spy(self, x, residual, norm):
        made.append(x.shape[0])
        real(self, x, residual, norm)
    monkeypatch.setattr(norm_fusion.Deferred, "__init__", spy)
    notes = []
    monkeypatch.setattr(norm_fusion, "note", lambda k, v: notes.append(v))
    import minimoe.rope_fusion as rf
    monkeypatch.setattr(rf, "note", lambda k, v: notes.append(v))
    s = RunSettings(device=DEVICE, ops="triton", gemv="stream").resolve()
    assert s.fold_norm == "on"
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        monkeypatch.setattr(norm_fusion, "ATTENTION", False)
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert made == []
        monkeypatch.setattr(norm_fusion, "ATTENTION", True)
        notes.clear()
        folded_tokens, folded_logits = greedy_and_logits(model, batch, 3)
        if batch.shape[0] == 1:    # 3 one-token steps (2 by generate, 1 by the logits call) x every layer
            assert made == [1] * (3 * len(model.layers)) and set(notes) == {CARDS[card]}
        else:
            assert made == []
        made.clear()
        if EXACT:
            assert torch.equal(folded_logits, apart_logits)
        else:
            close(folded_logits, apart_logits, 1e-5)
        assert torch.equal(folded_tokens, apart_tokens)


def test_fits_only_where_it_can_run():
    s = RunSettings(device=DEVICE, ops="triton", gemv="stream").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 2, 8, torch.float32, DEVICE)
    block = model.layers[0]
    attn, norm = block.attn, block.attn_norm
    x = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    r = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    assert norm_fusion.fits(attn, x, r, norm, cache) and norm_fusion.fits(attn, x, None, norm, cache)
    assert not norm_fusion.fits(attn, torch.randn(2, 1, cfg.hidden_size, device=DEVICE), None, norm, cache)  # batch 2
    assert not norm_fusion.fits(attn, torch.randn(1, 2, cfg.hidden_size, device=DEVICE), None, norm, cache)  # a chunk
    assert not norm_fusion.fits(attn, x.half(), None, norm, cache)                       # not the norm weight's dtype
    assert not norm_fusion.fits(attn, x, r.half(), norm, cache)
    for mod in (norm, attn.wqkv):                                # a calibration or a plan's hook sees h: no fold
        hook = mod.register_forward_hook(lambda *a: None)
        assert not norm_fusion.fits(attn, x, r, norm, cache)
        hook.remove()
    s.fold_norm = "off"
    assert not norm_fusion.fits(attn, x, r, norm, cache)
    s.fold_norm, s.gemv = "on", "torch"                          # cuBLAS runs the projection: the norm kernel stays
    assert not norm_fusion.fits(attn, x, r, norm, cache)
    s.gemv = "stream"
    w = attn.wqkv.weight
    attn.wqkv.weight = torch.nn.Parameter(w.detach().T.contiguous().T)   # a strided weight
    assert not norm_fusion.fits(attn, x, r, norm, cache)
    attn.wqkv.weight = w
    assert norm_fusion.fits(attn, x, r, norm, cache)
