"""Guards the prefill path on integer experts (kernels/moe_dequant.py): the dequantization kernel against the PyTorch
oracle (QuantMatrix.dequantize, bit for bit), the chunked bf16-kernel MoE against the float64 loop oracle (chunks,
expert parallelism's offset, foreign ids), and fused_moe_quant's choice of it for prefill tiles."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from minimoe import qweights as Q  # noqa: E402
from minimoe.kernels import fused_moe_quant as FQ  # noqa: E402
from minimoe.kernels.moe_dequant import dequantize_stack, fused_moe_dequant  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
FORMATS = {"int8": Q.quantize_int8, "int4": lambda w: Q.quantize_int4(w, 32),
           "int4-g128": lambda w: Q.quantize_int4(w, 128), "int4-zero": lambda w: Q.quantize_int4(w, 32, True)}


def reference(x, q13, q2, ids, weights, offset=0):
    """float64 loop over the dequantized experts (the oracle of tests/test_quant_kernels.py)."""
    w13, w2 = q13.dequantize().double().cpu(), q2.dequantize().double().cpu()
    x, ids, weights = x.cpu().double(), ids.cpu(), weights.double().cpu()
    I = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for e in range(w13.shape[0]):
        tok, slot = torch.where(ids == e + offset)
        gate, up = (x[tok] @ w13[e].T).split(I, dim=-1)
        out.index_add_(0, tok, weights[tok, slot, None] * ((torch.nn.functional.silu(gate) * up) @ w2[e].T))
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dequantize_stack_gives_the_oracles_bits(fmt, dtype):
    """Rows of 72 and 40 inputs (not multiples of the group or of a word's codes), every expert and a slice."""
    gen = torch.Generator().manual_seed(0)
    for shape in ((5, 24, 72), (3, 72, 40)):
        m = FORMATS[fmt](torch.randn(*shape, generator=gen).to(DEVICE))
        assert torch.equal(dequantize_stack(m, slice(None), dtype).cpu(), m.dequantize(dtype).cpu())
        assert torch.equal(dequantize_stack(m, slice(1, 3), dtype).cpu(), m.dequantize(dtype, slice(1, 3)).cpu())


def test_dequantize_stack_refuses_other_formats():
    m = Q.quantize_fp8(torch.randn(2, 16, 32).to(DEVICE))
    with pytest.raises(ValueError, match="int4 / int8"):
        dequantize_stack(m, slice(None), torch.float16)


@pytest.mark.parametrize("fmt", ["int8", "int4-zero"])
def test_chunked_prefill_equals_the_loop_oracle(fmt):
    """6 experts, 2 a chunk (fp32 sums of the chunks) and all in one; ids 4..9 held here (offset 4), one slot foreign."""
    gen = torch.Generator().manual_seed(1)
    E, D, I, T, K = 6, 64, 40, 20, 2
    q13 = FORMATS[fmt](torch.randn(E, 2 * I, D, generator=gen).to(DEVICE) / D ** 0.5)
    q2 = FORMATS[fmt](torch.randn(E, D, I, generator=gen).to(DEVICE) / I ** 0.5)
    x = torch.randn(T, D, generator=gen).to(DEVICE, torch.float16)
    ids = torch.stack([torch.randperm(12, generator=gen)[:K] for _ in range(T)]).to(DEVICE)
    w = torch.rand(T, K, generator=gen).to(DEVICE)
    ref = reference(x, q13, q2, ids, w, offset=4)
    per_expert = 3 * I * D * 2
    for chunk in (2 * per_expert, None):
        out = fused_moe_dequant(x, q13, q2, ids, w, expert_offset=4, chunk_bytes=chunk)
        assert out.dtype == torch.float16 and out.shape == (T, D)
        err = ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()
        assert err < 3e-3, (chunk, err)


def test_fused_moe_quant_takes_it_for_prefill_tiles(monkeypatch):
    """Tiles of DEQUANT_MIN_M rows with 16-bit activations go to fused_moe_dequant (same output); {"in_kernel": True},
    PREFILL_DEQUANT off and fp32 activations keep the in-kernel GEMMs."""
    gen = torch.Generator().manual_seed(2)
    E, D, I, T, K = 4, 64, 32, 12, 2
    q13 = FORMATS["int4"](torch.randn(E, 2 * I, D, generator=gen).to(DEVICE) / D ** 0.5)
    q2 = FORMATS["int4"](torch.randn(E, D, I, generator=gen).to(DEVICE) / I ** 0.5)
    x = torch.randn(T, D, generator=gen).to(DEVICE, torch.float16)
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).to(DEVICE)
    w = torch.rand(T, K, generator=gen).to(DEVICE)
    calls = []
    real = FQ.fused_moe_dequant
    monkeypatch.setattr(FQ, "fused_moe_dequant", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = {"variant": "aligned", "BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4,
           "num_stages": 1}
    out = FQ.fused_moe_quant(x, q13, q2, ids, w, config=cfg)
    assert calls == [1] and torch.equal(out, real(x, q13, q2, ids, w))
    FQ.fused_moe_quant(x, q13, q2, ids, w, config=dict(cfg, in_kernel=True))
    FQ.fused_moe_quant(x.float(), q13, q2, ids, w, config=cfg)
    monkeypatch.setattr(FQ, "PREFILL_DEQUANT", False)
    FQ.fused_moe_quant(x, q13, q2, ids, w, config=cfg)
    assert calls == [1]


@pytest.mark.parametrize("rows_needed", [3, 6, 7])
def test_int8_takes_it_from_enough_rows_an_expert(monkeypatch, rows_needed):
    """int8 (cheap in-kernel decoding) switches only from DEQUANT_MIN_ROWS[8] routed rows an expert (T·K/E = 6 here),
    int4 from the first prefill tile."""
    monkeypatch.setitem(FQ.DEQUANT_MIN_ROWS, 8, rows_needed)
    gen = torch.Generator().manual_seed(3)
    E, D, I, T, K = 4, 64, 32, 12, 2
    x = torch.randn(T, D, generator=gen).to(DEVICE, torch.float16)
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).to(DEVICE)
    w = torch.rand(T, K, generator=gen).to(DEVICE)
    cfg = {"variant": "aligned", "BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4,
           "num_stages": 1}
    calls = []
    real = FQ.fused_moe_dequant
    monkeypatch.setattr(FQ, "fused_moe_dequant", lambda *a, **k: calls.append(1) or real(*a, **k))
    for fmt in ("int8", "int4"):
        q13 = FORMATS[fmt](torch.randn(E, 2 * I, D, generator=gen).to(DEVICE) / D ** 0.5)
        q2 = FORMATS[fmt](torch.randn(E, D, I, generator=gen).to(DEVICE) / I ** 0.5)
        calls.clear()
        out = FQ.fused_moe_quant(x, q13, q2, ids, w, config=cfg)
        taken = fmt == "int4" or T * K >= rows_needed * E
        assert calls == ([1] if taken else [])
        ref = FQ.fused_moe_quant(x, q13, q2, ids, w, config=dict(cfg, in_kernel=True))
        err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        assert err < 3e-3, (fmt, err)
