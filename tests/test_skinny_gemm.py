"""Guards the split-K skinny GEMM (kernels/skinny_gemm.py) and `--gemv skinny` against F.linear in float64."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from minimoe.kernels import skinny_gemm as S  # noqa: E402
from minimoe.kernels import tall_gemm as TG  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _ref(x, w, b):
    return F.linear(x.to(w.dtype).double(), w.double(), None if b is None else b.double())


def _err(y, ref) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


# (T, N, K, config): one token; T past a power of two; N and K not multiples of the tiles; a split whose last
# share is empty (K = 5 tiles over 4 shares of 2); as many shares as tiles; 64 tokens; an unsplit call
CASES = [(1, 40, 72, None), (3, 100, 200, {"SPLIT": 3, "BLOCK_K": 32, "BLOCK_N": 32}),
         (17, 33, 80, {"SPLIT": 4, "BLOCK_K": 16, "BLOCK_N": 16}), (5, 64, 160, {"SPLIT": 5, "BLOCK_K": 32}),
         (64, 48, 96, {"SPLIT": 2, "BLOCK_K": 32, "BLOCK_N": 16}), (9, 70, 64, {"SPLIT": 1, "BLOCK_K": 32})]


@pytest.mark.parametrize("T,N,K,config", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [False, True])
def test_skinny_matches_linear(T, N, K, config, dtype, bias):
    g = torch.Generator().manual_seed(T * 1000 + N + K)
    x = torch.randn(T, K, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype).to(DEVICE)
    b = torch.randn(N, generator=g).to(dtype).to(DEVICE) if bias else None
    y = S.skinny_gemm(x, w, b, config=config)
    assert y.shape == (T, N) and y.dtype == dtype
    assert _err(y, _ref(x, w, b)) <= TOL[dtype]
    assert torch.equal(S.skinny_gemm(x, w, b, config=config), y)          # the split sums in a fixed order


def test_wider_weight_converts_x_in_registers():
    """A float32 gate with fp16 (bf16 on a GPU) activations, DeepSeek's router: y is float32 and equals
    F.linear(x.float(), W) to fp32 rounding; out_dtype overrides."""
    xdt = torch.bfloat16 if DEVICE.type == "cuda" else torch.float16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 128, generator=g).to(xdt).to(DEVICE)
    w = torch.randn(64, 128, generator=g).to(DEVICE)
    y = S.skinny_gemm(x, w, config={"SPLIT": 2, "BLOCK_K": 32})
    assert y.dtype == torch.float32 and _err(y, _ref(x, w, None)) <= 1e-5
    assert S.skinny_gemm(x, w, out_dtype=torch.float16).dtype == torch.float16


def test_bf16_parts_of_an_fp32_weight_sum_back_to_it():
    """split3's decomposition (in PyTorch, the kernel's casts): hi + mid + lo == w in fp32 for trained-gate magnitudes
    (the three bf16 parts hold 24 significand bits), and each product with a bf16 x is exact in fp32."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 2048, generator=g) * torch.logspace(-4, 1, 2048)            # 1e-4 .. 10
    hi = w.bfloat16()
    rest = w - hi.float()
    mid = rest.bfloat16()
    lo = (rest - mid.float()).bfloat16()
    assert torch.equal(hi.float() + mid.float() + lo.float(), w)
    x = torch.randn(2048, generator=g).bfloat16()
    for part in (hi, mid, lo):
        assert torch.equal(x.float() * part.float(), (x.double() * part.double()).float())


@pytest.mark.parametrize("T,N,K,config", [(1, 40, 72, None), (17, 33, 80, {"SPLIT": 4, "BLOCK_K": 16, "BLOCK_N": 16}),
                                          (64, 64, 256, {"SPLIT": 2, "BLOCK_K": 64, "BLOCK_N": 16})])
def test_split3_is_as_exact_as_fp32(T, N, K, config):
    """A float32 weight as three parts of x's 2-byte dtype on the tensor cores (fp16 here: the interpreter has no
    bf16; the GPU test below runs bf16): fp32 rounding against float64, where one fp16 cast of the weight (a single
    part) is ~1e3 times worse, so the low parts are really added."""
    xdt = torch.bfloat16 if DEVICE.type == "cuda" else torch.float16
    g = torch.Generator().manual_seed(T + N + K)
    x = torch.randn(T, K, generator=g).to(xdt).to(DEVICE)
    w = (torch.randn(N, K, generator=g) / 4).to(DEVICE)                             # fp16 parts stay normal
    ref = _ref(x, w, None)
    y = S.skinny_gemm(x, w, config=config, split3=True)
    assert y.dtype == torch.float32 and _err(y, ref) <= 2e-6
    one_part = F.linear(x.double(), w.to(xdt).double())
    assert _err(one_part, ref) > 50 * max(_err(y, ref), 1e-7)


@pytest.mark.parametrize("T,N,K,config", [(150, 64, 256, {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64}),
                                          (65, 40, 72, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}),
                                          (1, 64, 128, None), (128, 64, 320, None),
                                          (150, 64, 256, {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT": 1}),
                                          (150, 64, 448, {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT": 5}),
                                          (1100, 24, 64, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32})])
def test_tall_gemm_split3_is_as_exact_as_fp32(T, N, K, config):
    """tall_gemm (row blocks, prefill's fp32 router): ragged last row block, N and K off the tiles, one row; K split
    by the rule (few row blocks), forced off, forced into 5 uneven shares, or not split (many row blocks), twice in a
    row (the split's counters reset themselves); fp32 rounding against float64 with 2-byte x as in
    test_split3_is_as_exact_as_fp32, and the plain fp32 dot as well."""
    xdt = torch.bfloat16 if DEVICE.type == "cuda" else torch.float16
    g = torch.Generator().manual_seed(T * 7 + N + K)
    x = torch.randn(T, K, generator=g).to(xdt).to(DEVICE)
    w = (torch.randn(N, K, generator=g) / 4).to(DEVICE)
    ref = _ref(x, w, None)
    y = TG.tall_gemm(x, w, config=config)
    assert y.shape == (T, N) and y.dtype == torch.float32 and _err(y, ref) <= 2e-6
    assert torch.equal(TG.tall_gemm(x, w, config=config), y)                  # the same bits again
    assert _err(F.linear(x.double(), w.to(xdt).double()), ref) > 50 * max(_err(y, ref), 1e-7)
    y32 = TG.tall_gemm(x, w, config=config, split3=False)
    assert _err(y32, ref) <= 1e-5
    with pytest.raises(ValueError, match="tall_gemm"):
        TG.tall_gemm(x[:0], w)
    with pytest.raises(ValueError, match="split3"):
        TG.tall_gemm(x.float(), w)
    with pytest.raises(ValueError, match="unit last stride"):
        TG.tall_gemm(x, w.t().contiguous().t())                               # a column-major weight


def test_tall_split_rule():
    """K is split only for grids of fewer than TALL_SPLIT_BELOW programs, at most 16 ways and n_k."""
    cfg = TG.TALL_CONFIG
    assert TG.tall_split(8192, 64, 2048, cfg) == 1                            # 128 row blocks
    assert TG.tall_split(128, 64, 2048, cfg) == 16                            # 2 row blocks
    assert TG.tall_split(128, 64, 128, cfg) == 2                              # only 2 K steps
    assert TG.tall_split(2048, 64, 2048, cfg) == 8                            # 32 programs: 9 ways -> 8, none empty


def test_tall_gemm_split_counters_reset_themselves(monkeypatch):
    """The split's counters (one a row block x column block tile) are one persistent buffer on a GPU; on the CPU
    `_counters_for` hands out fresh zeros, so install a persistent one: after two calls every counter is 0 again and
    both calls gave the same bits."""
    buf = torch.zeros(64, dtype=torch.int32, device=DEVICE)
    monkeypatch.setattr(S, "_counters_for", lambda device, n: buf)
    xdt = torch.bfloat16 if DEVICE.type == "cuda" else torch.float16
    g = torch.Generator().manual_seed(5)
    x = torch.randn(150, 320, generator=g).to(xdt).to(DEVICE)
    w = (torch.randn(40, 320, generator=g) / 4).to(DEVICE)
    cfg = {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32}                       # 3 x 3 tiles, split 10 ways
    assert TG.tall_split(150, 40, 320, dict(TG.TALL_CONFIG, **cfg)) == 10
    y1, y2 = TG.tall_gemm(x, w, config=cfg), TG.tall_gemm(x, w, config=cfg)
    assert torch.equal(y1, y2) and _err(y1, _ref(x, w, None)) <= 2e-6
    assert not buf.any()


def test_router_logits_takes_tall_gemm_past_64_tokens(monkeypatch):
    """linear.router_logits sends a float32 gate with bf16 h past skinny_gemm.MAX_T tokens to tall_gemm.py (under
    --gemv auto, with ROUTER_TALL_SPLIT3), and to F.linear with the knob off or --gemv torch."""
    from minimoe import linear as L
    calls = []
    monkeypatch.setattr(TG, "tall_gemm", lambda h, w, **k: calls.append(h.shape[0]) or F.linear(h.float(), w))
    h, w = torch.randn(100, 64).bfloat16(), torch.randn(8, 64)
    ref = F.linear(h.float(), w)
    assert torch.equal(L.router_logits(h, w, "auto"), ref) and calls == [100]
    assert torch.equal(L.router_logits(h, w, "torch"), ref) and calls == [100]
    monkeypatch.setattr(L, "ROUTER_TALL_SPLIT3", False)
    assert torch.equal(L.router_logits(h, w, "auto"), ref) and calls == [100]


def test_split3_default_and_refusals():
    """split3=None takes the split for bf16 x and a float32 weight (SPLIT3_BF16), never for fp16 or equal dtypes;
    forcing it without a float32 weight and 2-byte x is a ValueError."""
    x16, w32 = torch.randn(4, 64, device=DEVICE).half(), torch.randn(8, 64, device=DEVICE)
    with pytest.raises(ValueError, match="split3"):
        S.skinny_gemm(x16.float(), w32, split3=True)
    with pytest.raises(ValueError, match="split3"):
        S.skinny_gemm(x16, w32.half(), split3=True)
    seen = []
    real = S._skinny_kernel
    launch = type("L", (), {"__getitem__": lambda self, grid: lambda *a, **k: seen.append(k["SPLIT3"]) or real[grid](
        *a, **k)})()
    import unittest.mock as um
    with um.patch.object(S, "_skinny_kernel", launch):
        S.skinny_gemm(x16, w32)
        if DEVICE.type == "cuda":
            S.skinny_gemm(x16.bfloat16(), w32)
    assert seen == [False] + ([True] if DEVICE.type == "cuda" else [])


def test_default_config_fills_the_gpu():
    """About TARGET_PROGRAMS programs where K allows it; never more shares than K tiles, nor partials heavier than
    twice the weight bytes; 64-wide columns (32 past 16 tokens up to 4096 outputs, 128 past 8192); K steps of 128,
    64 for fp32 weights and int8 codes, the group for grouped formats."""
    c = S.default_config(4, 2048, 2048, torch.bfloat16)
    assert (c["BLOCK_N"], c["BLOCK_K"]) == (64, 128) and 2048 // 64 * c["SPLIT"] == 256
    c = S.default_config(64, 2048, 2048, torch.bfloat16, bits=0)
    assert (c["BLOCK_N"], c["SPLIT"]) == (32, 4)
    assert S.default_config(64, 6144, 2048, torch.bfloat16, bits=0)["BLOCK_N"] == 64
    assert S.default_config(4, 64, 2048, torch.bfloat16)["SPLIT"] == 16          # 16 K tiles: capped there
    assert S.default_config(64, 64, 2048, torch.bfloat16, bits=4, group=128)["SPLIT"] == 4   # partials: 1024 B / 256
    assert S.default_config(64, 64, 1024, torch.bfloat16, bits=4, group=128)["SPLIT"] == 2
    assert S.default_config(4, 64, 256, torch.bfloat16)["SPLIT"] == 2            # only 2 K tiles
    assert S.default_config(4, 32768, 2048, torch.bfloat16)["BLOCK_N"] == 128
    assert S.default_config(8, 64, 2048, torch.float32)["BLOCK_K"] == 64
    assert S.default_config(8, 64, 2048, torch.bfloat16, bits=8)["BLOCK_K"] == 64
    assert S.default_config(8, 64, 2048, torch.float32, bits=0)["BLOCK_K"] == 128


def test_refuses_what_it_would_misread():
    w = torch.randn(8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="skinny_gemm takes"):
        S.skinny_gemm(torch.randn(S.MAX_T + 1, 32, device=DEVICE), w)               # too many tokens
    with pytest.raises(ValueError, match="skinny_gemm takes"):
        S.skinny_gemm(torch.randn(2, 31, device=DEVICE), w)                        # K mismatch
    with pytest.raises(ValueError, match="skinny_gemm takes"):
        S.skinny_gemm(torch.randn(2, 32, device=DEVICE), w.half())                  # x wider than W
    with pytest.raises(ValueError, match="skinny_gemm takes"):
        S.skinny_gemm(torch.randn(2, 64, device=DEVICE)[:, ::2], w)                 # x not unit-stride
    with pytest.raises(ValueError, match="2-D x"):
        S.skinny_gemm(torch.randn(2, 3, 32, device=DEVICE), w)
    with pytest.raises(ValueError, match="the bias must be"):
        S.skinny_gemm(torch.randn(2, 32, device=DEVICE), w, torch.randn(7, device=DEVICE))
    assert not S.usable(0, w) and S.usable(1, w) and not S.usable(3, w.t())
    assert not S.usable(3, w.half(), torch.float32) and S.usable(3, w, torch.float16)   # x no wider, or an fp32 W
    b = torch.randn(16, device=DEVICE)                                             # a strided bias is read right
    x = torch.randn(3, 32, device=DEVICE)
    assert _err(S.skinny_gemm(x, w, b[::2], config={"SPLIT": 2}), _ref(x, w, b[::2])) <= 1e-5


def test_linear_and_router_dispatch(monkeypatch):
    """`--gemv skinny` sends 1..64 tokens to the kernel (a bias too) and F.linear past that; `auto` only with
    linear.SKINNY_AUTO and 3..64 tokens; router_logits does the same for a float32 gate."""
    from minimoe import linear as lin
    calls = []
    real = S.skinny_gemm
    monkeypatch.setattr(S, "skinny_gemm", lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    w, b = torch.randn(24, 40, device=DEVICE), torch.randn(24, device=DEVICE)
    for T in (1, 3, 64, 65):
        x = torch.randn(T, 40, device=DEVICE)
        assert _err(lin.linear(x, w, b, gemv="skinny"), _ref(x, w, b)) <= 1e-5
    xt = torch.randn(40, 5, device=DEVICE).t()                                      # not unit-stride: copied first
    assert _err(lin.linear(xt, w, b, gemv="skinny"), _ref(xt, w, b)) <= 1e-5
    assert calls == [1, 3, 64, 5]
    calls.clear()
    x = torch.randn(2, 4, 40, device=DEVICE)                                       # [B, S, in]: 8 tokens
    lin.linear(x, w, gemv="auto")
    monkeypatch.setattr(lin, "SKINNY_AUTO", True)
    y = lin.linear(x, w, gemv="auto")
    lin.linear(x[:, :1], w, gemv="auto")                                           # 2 tokens: the stream kernel's
    assert calls == [8] and y.shape == (2, 4, 24)
    calls.clear()
    h = torch.randn(8, 40, device=DEVICE).half()
    for gemv in ("skinny", "auto"):
        got = lin.router_logits(h, w, gemv)
        assert got.dtype == torch.float32 and _err(got, _ref(h, w, None)) <= 1e-5
    assert calls == [8, 8]
    assert lin.router_logits(h, w, "torch").dtype == torch.float32 and calls == [8, 8]
    wide = torch.randn(lin.ROUTER_MAX_E + 1, 40, device=DEVICE)                   # not a router-sized gate
    assert _err(lin.router_logits(h, wide, "auto"), _ref(h, wide, None)) <= 1e-5 and calls == [8, 8]


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v2-lite-tiny", "qwen2-moe-tiny"])
def test_skinny_model_equals_cublas(card, monkeypatch):
    """Decode at 3 sequences and a 5-token prompt (prefill T = 15 rows) with every dense layer and the router
    through the skinny kernel: the tokens and logits of F.linear (fp32), for a bf16-style gate (OLMoE), DeepSeek's
    fp32 gate and Qwen2's q/k/v bias and shared-expert gate."""
    from conftest import greedy_and_logits
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(experts="grouped", attn="sdpa", ops="torch", gemv="torch", device=DEVICE)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=5)
    prompt = torch.randint(0, cfg.vocab_size, (3, 5), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    out, shapes = {}, set()
    real = S.skinny_gemm
    monkeypatch.setattr(S, "skinny_gemm", lambda *a, **k: shapes.add(tuple(a[1].shape)) or real(*a, **k))
    for gemv in ("torch", "skinny"):
        s.gemv = gemv
        out[gemv] = greedy_and_logits(model, prompt, 3)
    router = model.layers[-1].ffn.router.weight
    assert tuple(router.shape) in shapes and len(shapes) >= 4          # the router and the dense layers
    assert torch.equal(out["skinny"][0], out["torch"][0])
    err = ((out["skinny"][1] - out["torch"][1]).abs().max() / out["torch"][1].abs().max()).item()
    assert err <= 1e-5, err


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the persistent counters and CUDA graphs need a GPU")
def test_counters_stay_zeroed_and_graph_replays():
    """The last program of each column block leaves its counter at 0: after split calls of several shapes the
    device's buffer is all zeros, and a captured call replays to the eager result."""
    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    ws = [torch.randn(n, 2048, device="cuda", dtype=torch.bfloat16) / 45 for n in (64, 2048, 6144)]
    eager = [S.skinny_gemm(x, w) for w in ws]
    assert int(S._counters[x.device].abs().sum()) == 0
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = [S.skinny_gemm(x, w) for w in ws]
    g.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(outs, eager))
    assert int(S._counters[x.device].abs().sum()) == 0


# ---- quantized weights (weight-only numerics: the activations are never quantized) ---------------------------

def _quant_dense(fmt, w):
    from minimoe import qweights as Q
    return {"fp8": lambda: Q.quantize_fp8(w, cls=Q.QuantWeight), "fp8-block": lambda: Q.quantize_fp8(w, 32, cls=Q.QuantWeight),
            "int8": lambda: Q.quantize_int8(w, cls=Q.QuantWeight), "int4": lambda: Q.quantize_int4(w, 32, cls=Q.QuantWeight),
            "int4-g128": lambda: Q.quantize_int4(w, 128, cls=Q.QuantWeight),
            "int4-zero": lambda: Q.quantize_int4(w, 32, zero_point=True, cls=Q.QuantWeight)}[fmt]()


# (T, N, K, config): K not a multiple of 32 (codes padded, the padding must not count), a split with an empty
# last share, 64 tokens over N smaller than a tile, an unsplit call
QCASES = [(5, 40, 200, None), (17, 100, 160, {"SPLIT": 4, "BLOCK_N": 32}), (64, 24, 96, {"SPLIT": 2, "BLOCK_N": 16}),
          (9, 64, 256, {"SPLIT": 1})]


@pytest.mark.parametrize("fmt", ["fp8", "fp8-block", "int8", "int4", "int4-g128", "int4-zero"])
@pytest.mark.parametrize("T,N,K,config", QCASES)
def test_quant_skinny_matches_dequantize_then_matmul(fmt, T, N, K, config):
    g = torch.Generator().manual_seed(T + N + K)
    w = _quant_dense(fmt, (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE))
    b = torch.randn(N, generator=g).to(DEVICE)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(T, K, generator=g).to(dtype).to(DEVICE)
        y = S.skinny_gemm_quant(x, w, b, config=config)
        ref = x.double() @ w.dequantize(torch.float32).double().T + b.double()
        assert y.dtype == dtype and y.shape == (T, N)
        assert _err(y, ref) <= TOL[dtype], (fmt, dtype)


def test_quant_linear_routes_by_rows(monkeypatch):
    """QuantWeight.linear with its kernels on: 1-4 rows the GEMV, 5-64 the skinny GEMM (bias in its epilogue),
    more the W8A8 / dequantize path; SKINNY_QUANT off sends 5-64 rows back there."""
    from minimoe import qweights as Q
    from minimoe.kernels import fused_moe_quant_small
    w = _quant_dense("int8", torch.randn(48, 128, device=DEVICE) / 11)
    w.use_kernels = True
    calls = []
    real_s, real_g = S.skinny_gemm_quant, fused_moe_quant_small.quant_gemv
    monkeypatch.setattr(S, "skinny_gemm_quant", lambda *a, **k: calls.append(("skinny", a[0].shape[0])) or real_s(*a, **k))
    monkeypatch.setattr(fused_moe_quant_small, "quant_gemv", lambda *a, **k: calls.append(("gemv", a[0].shape[0]))
                        or real_g(*a, **k))
    b = torch.randn(48, device=DEVICE)
    for T in (4, 5, 64, 65):
        x = torch.randn(T, 128, device=DEVICE)
        ref = x.double() @ w.dequantize(torch.float32).double().T + b.double()
        assert _err(w.linear(x, b), ref) <= 1e-5
    assert calls == [("gemv", 4), ("skinny", 5), ("skinny", 64)]
    y = w.linear(torch.randn(6, 128, device=DEVICE).half(), b)                      # an fp32 bias on fp16 x: promoted
    assert y.dtype == torch.float32 and calls[-1] == ("skinny", 6)
    monkeypatch.setattr(Q, "SKINNY_QUANT", False)
    w.linear(torch.randn(5, 128, device=DEVICE))
    assert calls[-1] == ("skinny", 6)


def test_quant_skinny_refuses_what_it_cannot_read():
    from minimoe import qweights as Q
    w = _quant_dense("int8", torch.randn(16, 64, device=DEVICE))
    with pytest.raises(ValueError, match="skinny_gemm_quant takes"):
        S.skinny_gemm_quant(torch.randn(S.MAX_T + 1, 64, device=DEVICE), w)
    with pytest.raises(ValueError, match="skinny_gemm_quant takes"):
        S.skinny_gemm_quant(torch.randn(3, 63, device=DEVICE), w)
    stack = Q.quantize_int8(torch.randn(2, 16, 64, device=DEVICE))                   # two experts, not one matrix
    assert not S.quant_usable(3, stack, torch.float32) and S.quant_usable(3, w, torch.float32)


def test_bench_script_smoke(tmp_path):
    """scripts/bench_skinny.py end to end on tiny shapes under the interpreter (bf16-style and int4 rows)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_skinny.py"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--formats", "none", "int4", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ))   # the interpreter on a CPU (conftest)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "# 4 rows, 0 FAIL" in run.stdout and (tmp_path / "bench_skinny.json").exists()
