"""Guards the 2-D decode GEMVs (kernels/fused_moe_quant_gemv.py) against dequantize-then-matmul in float64:
every format, ragged tokens, skipped and foreign slots, widths that are not a multiple of a scale group."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from minimoe.kernels import fused_moe_quant_small as small  # noqa: E402
from minimoe.kernels.fused_moe_quant import fused_moe_quant  # noqa: E402
from minimoe.kernels.fused_moe_quant_gemv import quant_gemv_2d  # noqa: E402
from test_quant_kernels import BNB, DEVICE, FORMATS, check, fmt_param, make, reference, routing  # noqa: E402

GEMV = {"variant": "gemv"}
# fp32: f = 1 + u/2^bits keeps 23 − bits bits below the code, and the 1.0 comes back out by a subtraction of
# Σ x per group: a few units of 2^-20 of the sums, against the 2^-24 of a plain fp32 dot
TOL = {"fp32": 2e-5, "fp16": 2e-3}
ALL = ["int8", "int4", "int4-g128", "int4-zero", "fp8", "fp8-block", "nf4", "bnb-int8"]


@pytest.mark.parametrize("fmt", fmt_param(ALL))
def test_one_token_over_60_experts(fmt):
    """T = 1, K = 4 of E = 60 (a decode step of Qwen1.5-MoE's shape class); I = 40 pads every group."""
    gen = torch.Generator().manual_seed(11)
    q13, q2 = make(fmt, 60, gen)
    x = torch.randn(1, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(1, 4, 60, gen)
    check(fused_moe_quant(x, q13, q2, ids, w, config=GEMV), reference(x, q13, q2, ids, w), TOL["fp32"])


@pytest.mark.parametrize("fmt", fmt_param(["int8", "int4-zero", "fp8-block", "nf4"]))
def test_ragged_tokens_skipped_and_foreign_slots(fmt):
    """T = 3 with K = 4, ids -1 (skipped) and ids held by another rank (global 7..66 here): exact zeros."""
    gen = torch.Generator().manual_seed(12)
    q13, q2 = make(fmt, 60, gen)
    x = torch.randn(3, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(3, 4, 80, gen)
    ids[0, 1], ids[2, 3] = -1, -1
    got = fused_moe_quant(x, q13, q2, ids, w, expert_offset=7, config=GEMV)
    check(got, reference(x, q13, q2, ids, w, offset=7), TOL["fp32"])
    none = torch.full((3, 4), 70, device=DEVICE)                                     # no slot is ours
    assert torch.equal(fused_moe_quant(x, q13, q2, none, w, expert_offset=7, config=GEMV), torch.zeros_like(x))


@pytest.mark.parametrize("fmt,tiles", [("int4", {"BLOCK_N": 4, "BLOCK_K": 64, "down": {"BLOCK_N": 8, "BLOCK_K": 32}}),
                                       ("int8", {"BLOCK_N": 2, "BLOCK_K": 16, "down": {"BLOCK_N": 32, "BLOCK_K": 128}}),
                                       ("fp8", {"BLOCK_N": 8, "BLOCK_K": 32, "down": {"BLOCK_N": 4, "BLOCK_K": 16}})])
def test_other_tiles_and_half_precision(fmt, tiles):
    """Steps of several groups, of one word, wider than the reduction; fp16 activations in and out."""
    gen = torch.Generator().manual_seed(13)
    q13, q2 = make(fmt, 8, gen, d=96)
    ids, w = routing(2, 2, 8, gen)
    for dtype, tol in ((torch.float32, TOL["fp32"]), (torch.float16, TOL["fp16"])):
        x = torch.randn(2, 96, generator=gen).to(DEVICE, dtype)
        out = fused_moe_quant(x, q13, q2, ids, w, config={"variant": "gemv", "gemv": tiles})
        assert out.dtype == dtype
        check(out, reference(x, q13, q2, ids, w), tol)


@pytest.mark.parametrize("fmt", fmt_param(["int8", "int4-g128", "int4-zero", "fp8", "fp8-block", "nf4", "bnb-int8"]))
def test_dense_gemv_2d(fmt):
    """N = 50, K = 72 (padded codes), T = 1 and 3."""
    gen = torch.Generator().manual_seed(14)
    w = FORMATS[fmt](torch.randn(1, 50, 72, generator=gen).to(DEVICE))
    for T in (1, 3):
        x = torch.randn(T, 72, generator=gen).to(DEVICE)
        check(quant_gemv_2d(x, w), x.double().cpu() @ w.dequantize()[0].double().cpu().T, TOL["fp32"])


def test_decode_variant_table_routes_calls(monkeypatch):
    """DECODE_VARIANT switches the default decode kernels per format; config["variant"] wins over it."""
    gen = torch.Generator().manual_seed(15)
    q13, q2 = make("int4", 16, gen)
    x = torch.randn(1, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(1, 2, 16, gen)
    calls = []
    real = small.fused_moe_quant_gemv.fused_moe_quant_gemv
    monkeypatch.setattr(small.fused_moe_quant_gemv, "fused_moe_quant_gemv", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setitem(small.DECODE_VARIANT, 4, "small")
    fused_moe_quant(x, q13, q2, ids, w)
    assert calls == []                                    # the table says "small"
    monkeypatch.setitem(small.DECODE_VARIANT, 4, "gemv")  # (fp8's measured default)
    check(fused_moe_quant(x, q13, q2, ids, w), reference(x, q13, q2, ids, w), TOL["fp32"])
    assert calls == [1]
    fused_moe_quant(x, q13, q2, ids, w, config={"variant": "small"})
    assert calls == [1]


def test_block_k_must_hold_whole_scale_groups():
    gen = torch.Generator().manual_seed(16)
    q13, q2 = make("int4", 4, gen)
    x = torch.randn(1, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(1, 1, 4, gen)
    with pytest.raises(AssertionError, match="scale group"):
        fused_moe_quant(x, q13, q2, ids, w, config={"variant": "gemv", "gemv": {"BLOCK_K": 16}})


assert set(BNB) <= set(ALL)


@pytest.mark.parametrize("fmt", fmt_param(["fp8", "fp8-block"]))
def test_fp8_from_three_decode_tokens_runs_the_tensor_core_tiles(fmt, monkeypatch):
    """fp8 at FP8_DOT_MIN_T+ tokens of a decode-sized call (T·K·4 <= E) takes the aligned kernel with its
    16-row tiles (activations fp8 too, so W8A8's tolerance); fewer tokens stay on the GEMVs."""
    from minimoe.kernels import fused_moe_quant as fq
    gen = torch.Generator().manual_seed(17)
    q13, q2 = make(fmt, 60, gen)
    calls = []
    real = fq.align_tokens_by_expert
    monkeypatch.setattr(fq, "align_tokens_by_expert", lambda *a, **k: calls.append(1) or real(*a, **k))
    for T, aligned in ((fq.FP8_DOT_MIN_T - 1, False), (fq.FP8_DOT_MIN_T, True)):
        x = torch.randn(T, q13.K, generator=gen).to(DEVICE)
        ids, w = routing(T, 4, 60, gen)
        calls.clear()
        check(fused_moe_quant(x, q13, q2, ids, w), reference(x, q13, q2, ids, w), 8e-2 if aligned else TOL["fp32"])
        assert bool(calls) == aligned, T
