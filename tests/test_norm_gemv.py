"""Guards `--fold-attn-norm` (norm_fusion.py, kernels/norm_gemv.py): the q/k/v GEMV with the residual add and the
RMSNorm folded in gives the unfused path's bits for x + residual, a float64 oracle of its own formula
((W · (g ⊙ s)) / rms(s) + bias) within fp32 rounding and the unfused rms_norm -> dense_gemv within one rounding of h,
runs only where it fits, and refuses bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import norm_fusion  # noqa: E402
from minimoe.kernels.dense_gemv import dense_gemv  # noqa: E402
from minimoe.kernels.norm_gemv import norm_gemv, usable  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.ops import rms_norm_torch  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6

CASES = {
    # name: (T, D, N, bias, config)
    "olmoe_like": (1, 128, 384, False, None),
    "two_tokens_bias": (2, 96, 200, True, None),                      # D, N not powers of two; a bias (Qwen's q/k/v)
    "chunks_past_blocks": (1, 200, 24, False, {"BLOCK_N": 16, "BLOCK_K": 16}),   # 13 chunks of s over 2 programs
    "one_output": (1, 64, 1, False, None),
    "no_residual": (1, 80, 96, False, None),                           # a first layer: s = x
}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])   # the interpreter: no bf16


def make(T, D, N, dtype, seed, bias=False, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen) * scale
    res = torch.randn(T, D, generator=gen) * scale
    g = 1.0 + 0.2 * torch.randn(D, generator=gen)
    w = torch.randn(N, D, generator=gen) * D ** -0.5
    b = torch.randn(N, generator=gen) if bias else None
    out = [t.to(DEVICE, dtype) for t in (x, res, g, w)]
    return out + [None if b is None else b.to(DEVICE, dtype)]


def oracle(s, g, w, b, eps):
    """The fold's formula in float64 from the rounded s."""
    sd = s.double()
    inv = torch.rsqrt((sd * sd).mean(-1, keepdim=True) + eps)
    y = ((sd * g.double()) @ w.double().T) * inv
    return y if b is None else y + b.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_oracle_and_unfused(case, dtype):
    T, D, N, bias, config = CASES[case]
    x, res, g, w, b = make(T, D, N, dtype, 1, bias)
    if case == "no_residual":
        res = None
    y, s = norm_gemv(x, res, g, EPS, w, b, config=config)
    assert y.shape == (T, N) and y.dtype == dtype and s.shape == (T, D)
    s_ref = x if res is None else (x.float() + res.float()).to(dtype)
    assert torch.equal(s, s_ref), "x + residual: the unfused bits"
    ref = oracle(s_ref, g, w, b, EPS)
    scale = ref.abs().max().item()
    rounding = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]     # y's own rounding
    assert (y.double() - ref).abs().max().item() <= rounding * scale
    h, _ = rms_norm_torch(s_ref, g, EPS)                                                    # the unfused path
    apart = dense_gemv(h, w, bias=b)
    one_h = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]        # + h's rounding
    assert (y.float() - apart.float()).abs().max().item() <= one_h * scale
    again = norm_gemv(x, res, g, EPS, w, b, config=config)
    assert torch.equal(y, again[0]) and torch.equal(s, again[1]), "the same bits on every call"
    logits, _ = norm_gemv(x, res, g, EPS, w, b, config=config, out_dtype=torch.float32)    # an LM head's float32
    assert logits.dtype == torch.float32 and torch.equal(logits, y.float())


def test_large_and_tiny_activations():
    """1 / rms is taken from s itself: a residual stream of 1e3 (massive activations) and one of 1e-3 give the
    oracle's outputs to fp32 rounding (no overflow of Σ s², no flush of small terms)."""
    for scale in (1e3, 1e-3):
        x, res, g, w, _ = make(1, 256, 64, torch.float32, 2, scale=scale)
        y, s = norm_gemv(x, res, g, EPS, w)
        ref = oracle(s, g, w, None, EPS)
        assert (y.double() - ref).abs().max().item() <= 2e-6 * ref.abs().max().item(), scale


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs and PDL need a GPU")
def test_graphed_equals_eager_with_pdl():
    """Replayed from a CUDA graph with fresh inputs copied in (PDL where the GPU has it): the eager call's bits."""
    pdl = torch.cuda.get_device_capability()[0] >= 9
    x, res, g, w, _ = make(1, 2048, 6144, torch.bfloat16, 11)
    norm_gemv(x, res, g, EPS, w, pdl=pdl)                               # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = norm_gemv(x, res, g, EPS, w, pdl=pdl)
    for seed in (12, 13):
        x2, r2, _, _, _ = make(1, 2048, 6144, torch.bfloat16, seed)
        x.copy_(x2)
        res.copy_(r2)
        graph.replay()
        eager = norm_gemv(x, res, g, EPS, w, pdl=pdl)
        for u, v in zip(out, eager):
            assert torch.equal(u, v), "graphed = eager, bit for bit"


def test_refuses_bad_input():
    x, res, g, w, _ = make(1, 32, 48, torch.float32, 0)
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        norm_gemv(torch.randn(3, 32, device=DEVICE), res, g, EPS, w)                      # 3 tokens
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        norm_gemv(x, res, g, EPS, w.half())                                                # another dtype
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        norm_gemv(x, res, g, EPS, w[:, :16])                                               # another D
    with pytest.raises(ValueError, match="outside what the kernel runs"):
        norm_gemv(x, res, g, EPS, w, torch.zeros(47, device=DEVICE))                       # bias not [N]
    with pytest.raises(ValueError, match="do not fit"):
        norm_gemv(x, res[:, :16], g, EPS, w)
    with pytest.raises(ValueError, match="do not fit"):
        norm_gemv(x, res, g[:16], EPS, w)
    with pytest.raises(ValueError, match="do not fit"):
        norm_gemv(x, res.half(), g, EPS, w)
    assert usable(1, 32, w, torch.float32)
    assert not usable(1, 32, w.t().contiguous().t(), torch.float32)                        # not contiguous


@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen3-moe-tiny", "mixtral-tiny"])
def test_model_fold_equals_apart(card, monkeypatch):
    """End to end (a full q/k norm; per-head q/k norms; Mixtral with --fuse-rope off, so the q/k/v GEMV is its own
    launch): the same greedy tokens and, in fp32, logits within rounding; the fold runs at batch 1 on every layer."""
    runs, heads = [], []
    real_run, real_head = norm_fusion.run, norm_fusion.run_head
    monkeypatch.setattr(norm_fusion, "run", lambda *a, **k: runs.append(  # x [B, S, D], or the gathered ids [B, S]
        (a[1] if a[1] is not None else k["gather"][0]).shape[0]) or real_run(*a, **k))
    monkeypatch.setattr(norm_fusion, "run_head", lambda *a: heads.append(a[1].shape[0]) or real_head(*a))
    monkeypatch.setattr(norm_fusion, "HEAD", True)                    # the head fold too (off by default: no faster)
    s = RunSettings(device=DEVICE, ops="triton", fuse_rope="off", fold_attn_norm="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, 4), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert runs == []
        s.fold_attn_norm = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.fold_attn_norm = "off"
        expect = cfg.n_layers * 3 if batch.shape[0] == 1 else 0       # 3 decode steps of one token, every layer
        assert len(runs) == expect and set(runs) <= {1}
        # the final norm + LM head: at every one-token logits row (the 3 decode steps, and the prefills' last rows)
        assert (len(heads) >= 3 if batch.shape[0] == 1 else heads == []) and set(heads) <= {1}
        runs.clear()
        heads.clear()
        err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
        assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)


def test_fits_only_where_it_can_run(monkeypatch):
    from minimoe.kv_cache import KVCache
    s = RunSettings(device=DEVICE, ops="triton", fold_attn_norm="on", fuse_rope="off").resolve()
    model, cfg, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 3, 8, torch.float32, DEVICE)
    block = model.layers[1]
    x = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    step = cache.step(1, 2)
    assert norm_fusion.fits(block, x, x, step, cache)
    assert not norm_fusion.fits(block, x.expand(2, 1, -1), x.expand(2, 1, -1), step, cache)   # two tokens
    assert norm_fusion.fits(block, x, None, step, cache)                                      # a first layer too
    assert not norm_fusion.fits(block, x, x, cache.step(1, 0), cache)                         # a fresh prefill
    for module in (block.attn, block.attn.wqkv, block.attn_norm):                            # a TP plan, calibration
        hook = module.register_forward_hook(lambda *a: None)
        assert not norm_fusion.fits(block, x, x, step, cache)
        hook.remove()
    assert norm_fusion.fits(block, x, x, step, cache)
    s.fuse_rope = "on"                                               # Mixtral's q/k/v GEMV is --fuse-rope's launch:
    assert norm_fusion.fits(block, x, x, step, cache)                # folded into it (WITH_ROPE, on by default)
    monkeypatch.setattr(norm_fusion, "WITH_ROPE", False)
    assert not norm_fusion.fits(block, x, x, step, cache)
    s.fuse_rope = "off"
    s.fold_attn_norm = "off"
    assert not norm_fusion.fits(block, x, x, step, cache)
    mla, mcfg, _ = build_model("deepseek-v2-lite-tiny", "dummy", dtype=torch.float32, device=DEVICE,
                               settings=RunSettings(device=DEVICE, ops="triton", fold_attn_norm="on").resolve(), seed=1)
    mcache = KVCache(mcfg, 3, 8, torch.float32, DEVICE)
    xm = torch.randn(1, 1, mcfg.hidden_size, device=DEVICE)
    assert not norm_fusion.fits(mla.layers[1], xm, xm, mcache.step(1, 2), mcache)             # MLA: no q/k/v GEMV


def test_settings_resolution():
    assert RunSettings(device="cpu", ops="triton").resolve().fold_attn_norm == "off"          # auto: on a GPU only
    assert RunSettings(device="cpu", ops="triton", fold_attn_norm="on").resolve().fold_attn_norm == "on"
    with pytest.raises(ValueError, match="--fold-attn-norm on .*got --ops torch"):
        RunSettings(device="cpu", fold_attn_norm="on").resolve()
    with pytest.raises(ValueError, match="--fold-attn-norm yes"):
        RunSettings(fold_attn_norm="yes").resolve()


def test_head_fits_only_where_it_can_run(monkeypatch):
    s = RunSettings(device=DEVICE, ops="triton", fold_attn_norm="on").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    x = torch.randn(1, 1, cfg.hidden_size, device=DEVICE)
    assert not norm_fusion.head_fits(model, x, x)                                             # off by default
    monkeypatch.setattr(norm_fusion, "HEAD", True)
    assert norm_fusion.head_fits(model, x, x)
    assert not norm_fusion.head_fits(model, x.expand(2, 1, -1), x.expand(2, 1, -1))          # two tokens
    for module in (model.lm_head, model.norm):                                                # a TP head, calibration
        hook = module.register_forward_hook(lambda *a: None)
        assert not norm_fusion.head_fits(model, x, x)
        hook.remove()
    s.fold_attn_norm = "off"
    assert not norm_fusion.head_fits(model, x, x)


@pytest.mark.parametrize("n_new,valid", [(1, None), (3, None), (300, None), (5, [5, 2, 0]), (0, None)])
def test_step_index_kernel_equals_the_torch_expressions(n_new, valid):
    """kv_cache.py's positions and lengths in one launch on a GPU (kernels/step_index.py): the same integers."""
    from minimoe.kernels.step_index import step_index
    lengths = torch.tensor([0, 7, 4090], dtype=torch.int32, device=DEVICE)
    n_valid = None if valid is None else torch.tensor(valid, dtype=torch.int32, device=DEVICE)
    positions, seq_lens = step_index(lengths, n_new, n_valid)
    assert positions.dtype == torch.int64 and seq_lens.dtype == torch.int32
    assert torch.equal(positions, lengths.long()[:, None] + torch.arange(n_new, device=DEVICE))
    assert torch.equal(seq_lens, lengths + (n_new if n_valid is None else n_valid))
    with pytest.raises(ValueError, match="int32"):
        step_index(lengths.long(), n_new)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gathered_rows_equal_the_embedding_then_the_fold(dtype):
    """ids + a [V, D] table (norm_fusion.EMBED): the rows table[ids] are read inside the kernel and returned as the
    residual stream; the outputs are the fold's on those rows, bit for bit (an id outside the table reads zeros)."""
    g_ = torch.Generator().manual_seed(6)
    table = torch.randn(50, 72, generator=g_).to(DEVICE, dtype)
    _, _, g, w, b = make(1, 72, 40, dtype, 7, bias=True)
    for ids in ([3], [49, 0]):
        ids = torch.tensor(ids, dtype=torch.int64, device=DEVICE)
        y, s = norm_gemv(table, None, g, EPS, w, b, ids=ids)
        rows = table[ids]
        assert torch.equal(s, rows)
        y_ref, _ = norm_gemv(rows, None, g, EPS, w, b)
        assert torch.equal(y, y_ref)
    y, s = norm_gemv(table, None, g, EPS, w, b, ids=torch.tensor([50], device=DEVICE))
    assert not s.any()
    with pytest.raises(ValueError, match="ids"):
        norm_gemv(table, table[:1], g, EPS, w, ids=torch.tensor([1], device=DEVICE))        # a residual beside ids
    with pytest.raises(ValueError, match="ids"):
        norm_gemv(table, None, g, EPS, w, ids=torch.tensor([1], dtype=torch.int32, device=DEVICE))


@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen3-moe-tiny"])
def test_model_embedding_gather_equals_apart(card, monkeypatch):
    """norm_fusion.EMBED: the first layer's fold reads the token's embedding row itself at batch 1 (one launch fewer);
    the greedy tokens and fp32 logits are those of the fold without it, and it runs at every one-token decode step."""
    s = RunSettings(device=DEVICE, ops="triton", fold_attn_norm="on").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=4)
    gathers = []
    real_run = norm_fusion.run
    monkeypatch.setattr(norm_fusion, "run", lambda *a, **k: (gathers.append(k.get("gather") is not None)
                                                             or real_run(*a, **k)))
    prompts = torch.randint(0, cfg.vocab_size, (1, 4), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    monkeypatch.setattr(norm_fusion, "EMBED", False)                 # the default is on: measure it against off
    apart_tokens, apart_logits = greedy_and_logits(model, prompts, 3)
    assert not any(gathers)
    monkeypatch.setattr(norm_fusion, "EMBED", True)
    gathers.clear()
    fused_tokens, fused_logits = greedy_and_logits(model, prompts, 3)
    assert sum(gathers) == 3                                          # the 3 decode steps' first layers
    assert torch.equal(fused_tokens, apart_tokens)
    assert torch.equal(fused_logits, apart_logits)                   # the same kernel on the same rows
    hook = model.embed.register_forward_hook(lambda *a: None)        # a hooked embedding keeps its own launch
    assert not norm_fusion.embed_fits(model, prompts[:, :1], None, None)
    hook.remove()
