"""Guards `--fuse-shared` (shared_fusion.py, kernels/fused_moe_small.SharedExpert): the shared expert inside the
routed experts' kernels (the decode variant's own programs; the aligned variant's virtual experts) equals routed +
shared computed apart (a float64 loop reference on awkward shapes; the tiny DeepSeek and Qwen2-MoE models end to
end), runs only where it fits, and refuses bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import greedy_and_logits

pytest.importorskip("triton")

import triton  # noqa: E402

from minimoe import shared_fusion  # noqa: E402
from minimoe.kernels import fused_moe as fm  # noqa: E402
from minimoe.kernels.fused_moe_small import SharedExpert  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, w13, w2, ids, weights, shared, expert_offset=0):
    """Σ_k w[t,k] · expert(ids[t,k])(x[t]) + shared(x[t]) in float64, one token and slot at a time."""
    T, D = x.shape
    E, I = w13.shape[0], w2.shape[2]
    out = torch.zeros(T, D, dtype=torch.float64)
    xd = x.double().cpu()
    for t in range(T):
        for k in range(ids.shape[1]):
            e = int(ids[t, k]) - expert_offset
            if 0 <= e < E:
                g, u = (w13[e].double().cpu() @ xd[t]).split(I)
                out[t] += float(weights[t, k]) * (w2[e].double().cpu() @ (F.silu(g) * u))
        I_S = shared.w2.shape[1]
        g, u = (shared.w13.double().cpu() @ xd[t]).split(I_S)
        y = shared.w2.double().cpu() @ (F.silu(g) * u)
        if shared.gate is not None:
            y = y * torch.sigmoid(xd[t] @ shared.gate.double().cpu())
        out[t] += y
    return out


def make(T, E, K, D, I, I_S, gated, dtype=torch.float32, seed=0, offset=0, n_global=None):
    gen = torch.Generator().manual_seed(seed)
    n_global = n_global or E
    x = torch.randn(T, D, generator=gen)
    w13 = torch.randn(E, 2 * I, D, generator=gen) * D ** -0.5
    w2 = torch.randn(E, D, I, generator=gen) * I ** -0.5
    ids = torch.stack([torch.randperm(n_global, generator=gen)[:K] for _ in range(T)])
    weights = torch.rand(T, K, generator=gen)
    shared = SharedExpert(torch.randn(2 * I_S, D, generator=gen) * D ** -0.5,
                          torch.randn(D, I_S, generator=gen) * I_S ** -0.5,
                          torch.randn(D, generator=gen) if gated else None)
    dev = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return (dev(x), dev(w13), dev(w2), ids.to(DEVICE), weights.to(DEVICE),
            SharedExpert(*(dev(t) for t in shared)))


def check_against_oracles(x, w13, w2, ids, weights, shared, offset, config, dtype):
    """fused_moe with the shared expert inside against the float64 loop, and against the routed kernels alone plus
    the shared expert in PyTorch (the unfused path's sum)."""
    out = fm.fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config, shared=shared)
    ref = reference(x, w13, w2, ids, weights, shared, offset)
    err = ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()
    assert err <= (1e-6 if dtype == torch.float32 else 2e-3), err
    apart = fm.fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config).float()
    g, u = (x.float() @ shared.w13.float().T).split(shared.w2.shape[1], dim=-1)
    y = (F.silu(g) * u) @ shared.w2.float().T
    if shared.gate is not None:
        y = y * torch.sigmoid(x.float() @ shared.gate.float())[:, None]
    err = ((out.float() - apart - y).abs().max() / ref.abs().max()).item()
    assert err <= (1e-5 if dtype == torch.float32 else 4e-3), err


CASES = {
    # name: (T, E, K, D, I, I_S, gated, offset, n_global)
    "deepseek_like_one_token": (1, 64, 6, 48, 36, 72, False, 0, None),     # I_S = 2 I (n_shared_experts 2)
    "qwen2_like_e60_gated": (1, 60, 4, 40, 44, 88, True, 0, None),
    "two_tokens_odd_widths": (2, 60, 4, 40, 44, 30, True, 0, None),        # I_S < I, neither a power of 2
    "shared_wider_than_tiles": (1, 8, 2, 24, 20, 150, False, 0, None),
    "foreign_slots_still_add_shared": (2, 16, 4, 32, 24, 40, False, 16, 48),   # an EP-style slice of 48
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(case, dtype):
    T, E, K, D, I, I_S, gated, offset, n_global = CASES[case]
    x, w13, w2, ids, weights, shared = make(T, E, K, D, I, I_S, gated, dtype, seed=len(case), offset=offset,
                                            n_global=n_global)
    check_against_oracles(x, w13, w2, ids, weights, shared, offset, {"variant": "small"}, dtype)


@pytest.mark.parametrize("case", ["deepseek_like_one_token", "qwen2_like_e60_gated", "shared_wider_than_tiles"])
def test_kernel_with_one_chunk_gemm1_tiles(case):
    """The shape of small_configs.STEP_TILES' shared-expert tiles (GEMM1 2 rows x the whole of D in one chunk, GEMM2
    4 stages deep), scaled to the tiny widths: routed and shared programs, and the gate, against the oracle."""
    T, E, K, D, I, I_S, gated, offset, n_global = CASES[case]
    x, w13, w2, ids, weights, shared = make(T, E, K, D, I, I_S, gated, torch.float32, seed=7, offset=offset,
                                            n_global=n_global)
    config = {"variant": "small", "small": {"BLOCK_N": 2, "BLOCK_K": triton.next_power_of_2(D),
                                             "down": {"BLOCK_N": 8, "BLOCK_K": 16, "num_stages": 4}}}
    out = fm.fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config, shared=shared)
    ref = reference(x, w13, w2, ids, weights, shared, offset)
    assert ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item() <= 1e-6


def test_kernel_refuses_what_does_not_fit():
    x, w13, w2, ids, weights, shared = make(1, 16, 2, 32, 24, 40, False)
    with pytest.raises(ValueError, match="does not fit"):
        fm.fused_moe(x, w13, w2, ids, weights, config={"variant": "small"},
                     shared=SharedExpert(shared.w13[:, :-1].contiguous(), shared.w2))
    with pytest.raises(ValueError, match="dtype"):
        fm.fused_moe(x, w13, w2, ids, weights, config={"variant": "small"},
                     shared=SharedExpert(shared.w13.double(), shared.w2))
    x8, w13_8, w2_8, ids8, weights8, shared8 = make(8, 16, 2, 32, 24, 40, False)
    assert fm.plan(8, 2, 16) == "aligned" and not fm.aligned_shared_fits(24, shared8)
    with pytest.raises(ValueError, match="multiple of I=24"):          # 40 columns are not virtual experts of 24
        fm.fused_moe(x8, w13_8, w2_8, ids8, weights8, shared=shared8)
    x8, w13_8, w2_8, ids8, weights8, shared8 = make(8, 16, 2, 32, 24, 48, False)
    with pytest.raises(ValueError, match="small_dot"):
        fm.fused_moe(x8, w13_8, w2_8, ids8, weights8, config={"variant": "small_dot"}, shared=shared8)


ALIGNED = {
    # name: (T, E, K, D, I, I_S, gated, offset, n_global)
    "deepseek_like_two_virtual": (5, 64, 6, 48, 36, 72, False, 0, None),
    "qwen2_like_e60_gated_four_virtual": (7, 60, 4, 40, 24, 96, True, 0, None),
    "one_virtual_ragged_blocks": (19, 8, 2, 24, 20, 20, False, 0, None),      # 19 tokens: a part-filled M-block
    "one_token_forced_aligned": (1, 16, 4, 32, 24, 48, True, 0, None),
    "foreign_slots_still_add_shared": (9, 16, 4, 32, 24, 72, False, 16, 48),  # an EP-style slice of 48
    "empty_experts": (3, 60, 2, 32, 16, 32, False, 0, None),                  # 6 pairs over 60 experts
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", list(ALIGNED))
def test_aligned_kernel_matches_reference(case, dtype):
    """The aligned variant (alignment, GEMM1, GEMM2, combine) with the shared expert as I_S / I virtual experts
    against the float64 loop, and against routed (aligned) + shared in PyTorch, on fresh random inputs."""
    T, E, K, D, I, I_S, gated, offset, n_global = ALIGNED[case]
    x, w13, w2, ids, weights, shared = make(T, E, K, D, I, I_S, gated, dtype, seed=len(case) + 50, offset=offset,
                                            n_global=n_global)
    config = {"variant": "aligned", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 4,
              "num_warps": 4, "num_stages": 2}
    check_against_oracles(x, w13, w2, ids, weights, shared, offset, config, dtype)


@pytest.mark.parametrize("case", ["deepseek_like_two_virtual", "foreign_slots_still_add_shared"])
def test_aligned_shared_ignores_weight_tma(case):
    """A config asking for `b_tma` (the prefill buckets' weight descriptors): the shared expert's launches keep the
    pointer loads (the routed-only launch of the check takes the descriptors) and both still match the oracles."""
    T, E, K, D, I, I_S, gated, offset, n_global = ALIGNED[case]
    x, w13, w2, ids, weights, shared = make(T, E, K, D, I, I_S, gated, torch.float32, seed=len(case) + 90,
                                            offset=offset, n_global=n_global)
    config = {"variant": "aligned", "BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 4,
              "num_warps": 4, "num_stages": 2, "b_tma": True}
    check_against_oracles(x, w13, w2, ids, weights, shared, offset, config, torch.float32)


@pytest.mark.parametrize("aligned_max_t", [0, 64])
@pytest.mark.parametrize("card", ["deepseek-v2-lite-tiny", "qwen2-moe-tiny", "deepseek-v3-tiny", "deepseek-moe-tiny"])
def test_model_fused_shared_equals_apart(card, aligned_max_t, monkeypatch):
    """On the tiny models (E = 6-16), a ratio of 1 lets batch 1 plan the decode variant, as E = 60-64 does; batch 2
    runs apart in the decode variant (shared_fusion.MAX_T). The prefills (3 and 6 tokens) plan the aligned variant
    where 3·B·K > E and fuse there unless ALIGNED_MAX_T is 0."""
    monkeypatch.setattr(fm, "SMALL_BATCH_RATIO", 1)
    monkeypatch.setattr(shared_fusion, "ALIGNED_MAX_T", aligned_max_t)
    runs = []
    real_run = shared_fusion.run
    monkeypatch.setattr(shared_fusion, "run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    s = RunSettings(experts="fused", device=DEVICE, fuse_shared="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=4)
    prompts = torch.randint(0, cfg.vocab_size, (2, 3), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    seen = set()
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert runs == []
        s.fuse_shared = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.fuse_shared = "off"
        B, n_prompt, K, E = batch.shape[0], batch.shape[1], cfg.top_k, cfg.n_experts
        expect = {T for T in (B, B * n_prompt) if (fm.plan(T, K, E) == "small" and T <= shared_fusion.MAX_T)
                  or (fm.plan(T, K, E) == "aligned" and T <= aligned_max_t)}
        assert set(runs) == expect, (runs, expect)
        seen |= set(runs)
        runs.clear()
        err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
        assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)
    assert (max(seen) > 1) == (aligned_max_t > 0)       # the aligned variant ran fused on every card when allowed


@pytest.mark.parametrize("card, shared", [("olmoe-tiny", False), ("qwen2-moe-tiny", True), ("deepseek-v2-lite-tiny", True)])
def test_settings_say_off_without_shared_experts(card, shared):
    """--fuse-shared resolves on for the fused path; a model without shared experts has nothing to fuse, so the
    header and the JSON (describe / as_json with the model's config) say off, explicit on likewise, while the
    settings themselves keep on (a draft or another model built from them still fuses its shared experts)."""
    from minimoe.families import config_from_hf
    from minimoe.cards import load_card
    from minimoe.runtime import check_settings
    cfg = config_from_hf(load_card(card))
    for asked in ("auto", "on"):
        s = RunSettings(experts="fused", device=DEVICE, dtype="fp32", fuse_shared=asked).resolve()
        check_settings(s, cfg)
        assert s.fuse_shared == "on" and s.as_json()["fuse_shared"] == "on"
        said = "on" if shared else "off"
        assert s.as_json(cfg)["fuse_shared"] == said and f" fuse_shared={said} " in s.describe(cfg)


def test_fits_only_where_it_can_run(monkeypatch):
    monkeypatch.setattr(fm, "SMALL_BATCH_RATIO", 1)
    s = RunSettings(experts="fused", device=DEVICE).resolve()
    assert s.fuse_shared == "on"
    model, cfg, _ = build_model("qwen2-moe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    moe = model.layers[0].ffn
    x = torch.randn(1, cfg.hidden_size, device=DEVICE)
    assert shared_fusion.fits(moe, x, cfg.top_k)
    xt = lambda T: torch.randn(T, cfg.hidden_size, device=DEVICE)  # noqa: E731
    assert fm.plan(2, cfg.top_k, cfg.n_experts) == "small" and fm.plan(3, cfg.top_k, cfg.n_experts) == "aligned"
    assert not shared_fusion.fits(moe, xt(2), cfg.top_k)   # decode variant: each token would re-read the shared weights
    assert shared_fusion.fits(moe, xt(3), cfg.top_k)       # aligned variant: virtual experts
    assert not shared_fusion.fits(moe, xt(shared_fusion.ALIGNED_MAX_T + 1), cfg.top_k)   # prefill sizes: apart
    monkeypatch.setattr(shared_fusion, "ALIGNED_MAX_T", 0)
    assert not shared_fusion.fits(moe, xt(3), cfg.top_k)
    monkeypatch.undo()
    monkeypatch.setattr(fm, "SMALL_BATCH_RATIO", 1)
    assert not shared_fusion.fits(moe, x.half(), cfg.top_k)       # not the weights' dtype
    for module in (moe.experts, moe.shared, moe.shared.w2):          # calibration, EP dispatch, a future plan
        hook = module.register_forward_hook(lambda *a: None)
        assert not shared_fusion.fits(moe, x, cfg.top_k)
        hook.remove()
    assert shared_fusion.fits(moe, x, cfg.top_k)
    s.fuse_shared = "off"
    assert not shared_fusion.fits(moe, x, cfg.top_k)


def test_settings_resolution():
    assert RunSettings(experts="fused").resolve().fuse_shared == "on"
    assert RunSettings(experts="grouped").resolve().fuse_shared == "off"
    assert RunSettings(experts="fused", quant="int8").resolve().fuse_shared == "off"
    for bad in (dict(experts="grouped"), dict(experts="fused", quant="int4"), dict(experts="fused", ep=2)):
        with pytest.raises(ValueError, match="--fuse-shared on.*got --experts"):
            RunSettings(fuse_shared="on", **bad).resolve()
    with pytest.raises(ValueError, match="--fuse-shared yes"):
        RunSettings(fuse_shared="yes").resolve()
