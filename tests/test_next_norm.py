"""Guards `--fuse-next-norm` (next_norm.py, kernels/next_norm.py): the next layer's residual add + RMSNorm inside the
MoE's last launch equals the MoE then the norm kernel (both variants, awkward shapes, fresh random inputs), leaves
its counters zeroed, runs in the engine only where it fits, and gives the tiny models' tokens and logits unchanged."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import next_norm  # noqa: E402
from minimoe.kernels import fused_moe as fm  # noqa: E402
from minimoe.kernels.fused_moe_small import SharedExpert  # noqa: E402
from minimoe.kernels.next_norm import NextNorm  # noqa: E402
from minimoe.kernels.rmsnorm import rms_norm  # noqa: E402
from minimoe.layers import Normed  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ALIGNED = {"variant": "aligned", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4,
           "num_stages": 2}

CASES = {
    # name: (T, E, K, D, I, I_S or 0, expert_offset, n_global, skipped slots, config)
    "one_token_e64": (1, 64, 6, 64, 48, 0, 0, None, 0, {"variant": "small"}),
    "one_token_shared_odd_d": (1, 60, 4, 96, 44, 88, 0, None, 0, {"variant": "small"}),
    "two_tokens_foreign_and_skipped": (2, 16, 4, 40, 24, 0, 16, 48, 1, {"variant": "small"}),
    "aligned_ragged": (19, 8, 2, 48, 20, 0, 0, None, 0, ALIGNED),
    "aligned_shared_virtual_e60": (5, 60, 4, 40, 24, 48, 0, None, 0, ALIGNED),
    "aligned_foreign_empty_experts": (3, 60, 2, 32, 16, 0, 16, 120, 1, ALIGNED),
    "one_token_aligned": (1, 16, 4, 64, 24, 0, 0, None, 0, ALIGNED),
}


def make(T, E, K, D, I, I_S, offset, n_global, skipped, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    n_global = n_global or E
    x = torch.randn(T, D, generator=gen)
    w13 = torch.randn(E, 2 * I, D, generator=gen) * D ** -0.5
    w2 = torch.randn(E, D, I, generator=gen) * I ** -0.5
    ids = torch.stack([torch.randperm(n_global, generator=gen)[:K] for _ in range(T)])
    ids[:, K - skipped:] = -1                                         # dynamic skipping's dropped slots
    weights = torch.rand(T, K, generator=gen)
    residual = torch.randn(T, D, generator=gen) * 3
    norm_w = 1 + 0.1 * torch.randn(D, generator=gen)
    shared = None
    if I_S:
        shared = SharedExpert(*(t.to(DEVICE, dtype) for t in (torch.randn(2 * I_S, D, generator=gen) * D ** -0.5,
                                                              torch.randn(D, I_S, generator=gen) * I_S ** -0.5)))
    dev = lambda t: t.to(DEVICE, dtype)  # noqa: E731
    return (dev(x), dev(w13), dev(w2), ids.to(DEVICE), weights.to(DEVICE), dev(residual), dev(norm_w), shared)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_equals_moe_then_norm(case, dtype):
    T, E, K, D, I, I_S, offset, n_global, skipped, config = CASES[case]
    x, w13, w2, ids, weights, residual, norm_w, shared = make(T, E, K, D, I, I_S, offset, n_global, skipped, dtype,
                                                              seed=len(case))
    eps = 1e-5
    y = fm.fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config, shared=shared)
    h_ref, s_ref = rms_norm(y, norm_w, eps, residual)
    counters = torch.zeros(T + 3, dtype=torch.int32, device=DEVICE)
    norm = NextNorm(residual, norm_w, eps, torch.full_like(x, float("nan")), torch.full_like(x, float("nan")),
                    counters)
    h = fm.fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config, shared=shared, norm=norm)
    assert h is norm.h
    assert torch.equal(norm.s, s_ref)                              # y rounded, then the add: the same bits
    tol = 0 if dtype == torch.float32 and DEVICE == "cpu" else (2e-6 if dtype == torch.float32 else 1e-3)
    err = ((h.float() - h_ref.float()).abs().max() / h_ref.float().abs().max()).item()
    assert err <= tol, err                                         # up to the fp32 order of mean(s²)
    assert not torch.isnan(h).any()
    assert int(counters.abs().sum()) == 0                          # left zeroed for the next call or replay
    h2 = fm.fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config, shared=shared, norm=norm)
    assert torch.equal(h2, h)                                      # and the counters work a second time


def test_refuses_what_does_not_fit():
    x, w13, w2, ids, weights, residual, norm_w, _ = make(2, 16, 4, 32, 24, 0, 0, None, 0, torch.float32, seed=3)
    ok = dict(residual=residual, weight=norm_w, eps=1e-6, h=torch.empty_like(x), s=torch.empty_like(x),
              counters=torch.zeros(2, dtype=torch.int32, device=DEVICE))
    small = {"variant": "small"}
    bad = {
        "residual's shape": dict(residual=residual[:1]),
        "weight's width": dict(weight=norm_w[:-1]),
        "an output's dtype": dict(h=torch.empty_like(x, dtype=torch.float16)),
        "too few counters": dict(counters=torch.zeros(1, dtype=torch.int32, device=DEVICE)),
        "no counters": dict(counters=None),
        "int64 counters": dict(counters=torch.zeros(2, dtype=torch.int64, device=DEVICE)),
        "a strided residual": dict(residual=torch.randn(32, 2, device=DEVICE).T),
    }
    for what, change in bad.items():
        with pytest.raises(ValueError):
            fm.fused_moe(x, w13, w2, ids, weights, config=small, norm=NextNorm(**{**ok, **change}))
            pytest.fail(what)
    # the aligned variant needs no counters; the legacy small_dot variant has no norm epilogue
    fm.fused_moe(x, w13, w2, ids, weights, config=ALIGNED, norm=NextNorm(**{**ok, "counters": None}))
    with pytest.raises(ValueError, match="small_dot"):
        fm.fused_moe(x, w13, w2, ids, weights, config={**ALIGNED, "variant": "small_dot"}, norm=NextNorm(**ok))


def _count_runs(monkeypatch):
    runs = []
    real = next_norm.run
    monkeypatch.setattr(next_norm, "run", lambda moe, x, w, ids, *a: runs.append(
        fm.plan(x.shape[0], ids.shape[1], moe.experts.n_local)) or real(moe, x, w, ids, *a))
    return runs


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v2-lite-tiny", "qwen2-moe-tiny"])
def test_model_tokens_and_logits_unchanged(card, monkeypatch):
    """Greedy tokens and logits with the fold equal those without it, at batch 1 (the decode variant) and 2, with
    prefills of 3 tokens; SMALL_BATCH_RATIO 1 lets the tiny models' 6-8 experts plan the decode variant as E = 60-64
    does at batch 1. The fold runs in both variants, and the last layer runs the model's final norm."""
    monkeypatch.setattr(fm, "SMALL_BATCH_RATIO", 1)
    monkeypatch.setattr(next_norm, "SMALL", True)                 # off by default (slower in the bs-1 step)
    runs = _count_runs(monkeypatch)
    s = RunSettings(experts="fused", device=DEVICE, ops="triton", fuse_next_norm="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=4)
    final = []
    model.norm.register_forward_hook(lambda *a: final.append(1))
    prompts = torch.randint(0, cfg.vocab_size, (2, 3), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert runs == [] and final
        final.clear()
        s.fuse_next_norm = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.fuse_next_norm = "off"
        # every step folds (the final norm inside the last MoE too) but the shared expert's models' batch-2 decode
        # steps, which run the shared expert apart (shared_fusion.MAX_T) and so keep the norms' own launches
        B, K, E, shared = batch.shape[0], cfg.top_k, cfg.n_experts, cfg.shared_intermediate_size > 0
        every = B == 1 or not shared
        plans = {fm.plan(T, K, E) for T in (B, B * batch.shape[1])
                 if not (shared and T > 1 and fm.plan(T, K, E) == "small")}
        assert set(runs) == plans and (not final) == every, (runs, plans, final)
        runs.clear()
        assert torch.equal(fused_tokens, apart_tokens)
        assert torch.equal(fused_logits, apart_logits) if DEVICE == "cpu" else \
            ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item() <= 1e-5


def test_fits_only_where_it_can_run(monkeypatch):
    monkeypatch.setattr(fm, "SMALL_BATCH_RATIO", 1)
    monkeypatch.setattr(next_norm, "SMALL", True)
    s = RunSettings(experts="fused", device=DEVICE, ops="triton").resolve()
    assert s.fuse_next_norm == "on"
    model, cfg, _ = build_model("qwen2-moe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    moe, norm = model.layers[0].ffn, model.layers[1].attn_norm
    xt = lambda T, dtype=torch.float32: torch.randn(T, cfg.hidden_size, device=DEVICE, dtype=dtype)  # noqa: E731
    K = cfg.top_k
    assert next_norm.fits(moe, xt(1), K, xt(1), norm)
    assert not next_norm.fits(moe, xt(1), K, xt(1), None)          # no next norm (a caller that gives none)
    assert not next_norm.fits(moe, xt(1), K, None, norm)           # no residual stream
    assert not next_norm.fits(moe, xt(1), K, xt(1, torch.float16), norm)
    assert not next_norm.fits(moe, xt(2), K, xt(2), norm)          # 2 tokens: the shared expert is not fused there
    assert next_norm.fits(moe, xt(3), K, xt(3), norm)              # aligned, shared as virtual experts
    assert not next_norm.fits(moe, xt(next_norm.MAX_T + 1), K, xt(next_norm.MAX_T + 1), norm)
    monkeypatch.setattr(next_norm, "ALIGNED", False)
    assert not next_norm.fits(moe, xt(3), K, xt(3), norm)
    monkeypatch.setattr(next_norm, "SMALL", False)
    assert not next_norm.fits(moe, xt(1), K, xt(1), norm)
    monkeypatch.setattr(next_norm, "SMALL", True)
    for module in (moe, moe.experts, moe.shared, moe.router):      # TP's all-reduce, EP dispatch, calibration
        hook = module.register_forward_hook(lambda *a: None)
        assert not next_norm.fits(moe, xt(1), K, xt(1), norm)
        hook.remove()
    assert next_norm.fits(moe, xt(1), K, xt(1), norm)
    s.fuse_next_norm = "off"
    assert not next_norm.fits(moe, xt(1), K, xt(1), norm)
    s.fuse_next_norm = s.fuse_shared = "on"


def test_returns_normed_and_block_skips_its_norm(monkeypatch):
    """The MoE hands a Normed to the next Block, which does not call its own attn_norm."""
    monkeypatch.setattr(fm, "SMALL_BATCH_RATIO", 1)
    monkeypatch.setattr(next_norm, "SMALL", True)
    s = RunSettings(experts="fused", device=DEVICE, ops="triton").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=2)
    moe, norm = model.layers[0].ffn, model.layers[1].attn_norm
    h, r = (torch.randn(1, 1, cfg.hidden_size, device=DEVICE) for _ in range(2))
    out = moe(h, residual=r, next_norm=norm)
    assert isinstance(out, Normed)
    ref_h, ref_r = norm(moe(h), r)
    assert torch.equal(out.residual, ref_r) and torch.equal(out.h, ref_h)
    calls = {i: 0 for i in range(cfg.n_layers)}
    for i, layer in enumerate(model.layers):
        layer.attn_norm.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    greedy_and_logits(model, torch.randint(0, cfg.vocab_size, (1, 3)).to(DEVICE), 2)
    assert calls[0] > 0 and all(calls[i] == 0 for i in range(1, cfg.n_layers))


def test_settings_resolution():
    assert RunSettings(experts="fused", ops="triton").resolve().fuse_next_norm == "on"
    assert RunSettings(experts="fused", ops="torch").resolve().fuse_next_norm == "off"
    assert RunSettings(experts="grouped", ops="triton").resolve().fuse_next_norm == "off"
    assert RunSettings(experts="fused", ops="triton", quant="int8").resolve().fuse_next_norm == "off"
    with pytest.raises(ValueError, match="fuse-next-norm"):
        RunSettings(experts="loop", ops="triton", fuse_next_norm="on").resolve()
    with pytest.raises(ValueError):
        RunSettings(fuse_next_norm="sometimes").resolve()
