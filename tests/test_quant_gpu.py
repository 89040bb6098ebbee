"""GPU-only guards for quantized models (skipped without CUDA): the graphed decode step equals the eager one, and
fp8 dense layers on torch._scaled_mm equal their PyTorch reference."""
import pytest
import torch

from minimoe import quant
from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.qweights import QuantWeight
from minimoe.settings import RunSettings

pytestmark = pytest.mark.gpu
try:
    import bitsandbytes  # noqa: F401
    HAVE_BNB = True
except ImportError:
    HAVE_BNB = False


def _tokens(model, prompts, steps, graphs):
    gen = Generator(model, prompts.shape[0], prompts.shape[1] + steps + 1)
    if graphs:
        enable_graphs(gen, prefill_lengths=[prompts.shape[1]])
    return gen.generate(prompts, steps)


def _moe_reference(x, w13, w2, weights, ids):
    """Σ_k weights[t, k] · expert(ids[t, k])(x[t]) in fp32, a token and slot at a time: x [T, D], w13 [E, 2I, D] and
    w2 [E, D, I] dequantized."""
    I = w2.shape[2]
    ref = torch.zeros(x.shape, device=x.device)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            hu = w13[e] @ x[t].float()
            ref[t] += weights[t, k] * (w2[e] @ (torch.nn.functional.silu(hu[:I]) * hu[I:]))
    return ref


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v3-tiny"])
@pytest.mark.parametrize("fmt", ["int4", "fp8", "nf4"])
def test_quantized_graphed_decode_equals_eager(card, fmt):
    if fmt == "nf4" and not HAVE_BNB:
        pytest.skip("bitsandbytes not importable")
    s = RunSettings(experts="fused", device="cuda", quant=fmt)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.bfloat16, device="cuda", settings=s, seed=1)
    assert cfg.extra["weight_format"]["quant"] == fmt
    prompts = torch.randint(0, cfg.vocab_size, (3, 9), device="cuda")
    assert torch.equal(_tokens(model, prompts, 12, graphs=True), _tokens(model, prompts, 12, graphs=False))


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v3-tiny"])
def test_fp8_gemv_kernels_graphed_decode_equals_eager(card, monkeypatch):
    """fp8 through the previous decode kernels ("gemv", fp32 sums; the default is now "pair"), in the decode graph."""
    from minimoe.kernels import fused_moe_quant_small
    monkeypatch.setitem(fused_moe_quant_small.DECODE_VARIANT, 0, "gemv")
    test_quantized_graphed_decode_equals_eager(card, "fp8")


def test_fp8_scaled_mm_equals_its_reference():
    w = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 0.02
    qw = quant.FORMATS["fp8"].stack(w, cls=QuantWeight)
    qw.use_kernels = True
    x = torch.randn(80, 512, device="cuda", dtype=torch.bfloat16)              # > WEIGHT_ONLY_MAX_T[0] rows: W8A8
    got, want = qw.linear(x).float(), qw.reference_linear(x).float()
    assert ((got - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.parametrize("fmt", ["int4", "int4-zero", "int8", "fp8", "fp8-block"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("chain", [1, 4])
def test_pair_ptx_equals_dequantize_then_matmul(fmt, scale, chain):
    """The packed-pair kernels' PTX (LOP3 / PRMT / cvt.e4m3x2 into fp16 pairs, HFMA2) at bf16 on a mid-size shape, T = 1 and 2,
    default tiles, x packed in the kernel or by pack_pairs: within bf16 rounding of the fp32 oracle, also for x up
    to ~120 whose h = silu(gate)·up reach ~1e4 (the fp16 scalings keep a word's partial sum finite); the fp16 sums
    chained over one word or four (pair_quads.py)."""
    from minimoe.experts import Experts
    from minimoe.kernels.fused_moe_quant import fused_moe_quant
    gen = torch.Generator(device="cuda").manual_seed(3)
    E, D, I, K = 8, 1024, 1408, 2
    dense = Experts.from_tensors(torch.randn(E, 2 * I, D, device="cuda", generator=gen).bfloat16() * 0.02,
                                 torch.randn(E, D, I, device="cuda", generator=gen).bfloat16() * 0.02)
    from minimoe.qexperts import QuantExperts
    from minimoe.qweights import quantize_fp8, quantize_int4, quantize_int8
    q = QuantExperts.quantize(dense, {"int4": quantize_int4, "int8": quantize_int8, "fp8": quantize_fp8,
                                      "fp8-block": lambda w: quantize_fp8(w, 128),
                                      "int4-zero": lambda w: quantize_int4(w, 128, zero_point=True)}[fmt])
    w13, w2 = q.w13.dequantize().float(), q.w2.dequantize().float()
    for T in (1, 2):
        x = (torch.randn(T, D, device="cuda", generator=gen) * scale).bfloat16()
        w, ids = torch.randn(T, E, device="cuda", generator=gen).softmax(-1).topk(K, dim=-1)
        ref = _moe_reference(x, w13, w2, w, ids)
        for cfg in ({"variant": "pair", "pair": {"chain": chain, "down": {"chain": chain}}},
                    {"variant": "pair", "pair": {"x_packed": True, "chain": chain, "down": {"chain": chain}}}):
            got = fused_moe_quant(x, q.w13, q.w2, ids, w, config=cfg)
            assert torch.isfinite(got).all()
            err = ((got.float() - ref).norm() / ref.norm()).item()
            assert err < 1e-2, (T, cfg, err)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_int4_checkpoint_on_the_gpu_matches_its_dequantized_weights(method, tmp_path):
    """A GPTQ / AWQ checkpoint (prequant_int4.py) through the GPU int4 kernels, zero points included (fused experts,
    the dense int4 GEMV at decode sizes, the graphed step), against its dequantized weights in bf16."""
    pytest.importorskip("transformers")
    from conftest import rel_err
    from test_quant_prequant_int4 import make_tiny, write_int4
    q_dir, deq_dir = write_int4(make_tiny("qwen2_moe", tmp_path / "src"), tmp_path, method)
    s = RunSettings(experts="fused", device="cuda")
    model, cfg, _ = build_model(str(q_dir), "auto", dtype=torch.bfloat16, device="cuda", settings=s)
    oracle, _, _ = build_model(str(deq_dir), "auto", dtype=torch.bfloat16, device="cuda",
                               settings=RunSettings(experts="fused", device="cuda"))
    assert cfg.extra["weight_format"]["quant"] == "int4-zp" and model.layers[0].attn.wqkv.weight.use_kernels
    prompts = torch.randint(0, cfg.vocab_size, (2, 7), device="cuda")
    got = Generator(model, 2, 8).append(prompts)
    assert rel_err(got, Generator(oracle, 2, 8).append(prompts)) < 3e-2
    assert torch.equal(_tokens(model, prompts, 8, graphs=True), _tokens(model, prompts, 8, graphs=False))


@pytest.mark.parametrize("fmt", ["int8", "int4", "int4-zero"])
@pytest.mark.parametrize("T", [16, 64])
def test_byte_tiles_equal_dequantize_then_matmul(fmt, T, monkeypatch):
    """The integer tensor-core tiles read as bytes (INT8_BYTE_TILES / INT4_BYTE_TILES), plain or made biased bf16
    operands (BIASED_TILES "ops" and the PTX "asm", whose pairs must land where tl.dot expects them) at bf16 on a
    mid-size shape with the configs the engine picks (the aligned MoE and the skinny dense GEMM): within bf16 rounding
    of the fp32 oracle, and of the word path."""
    from minimoe.experts import Experts
    from minimoe.kernels import fused_moe_quant as FQ
    from minimoe.kernels.skinny_gemm import skinny_gemm_quant
    from minimoe.qexperts import QuantExperts
    from minimoe.qweights import quantize_int4, quantize_int8
    quantize = {"int8": quantize_int8, "int4": quantize_int4,
                "int4-zero": lambda w: quantize_int4(w, 128, zero_point=True)}[fmt]
    gen = torch.Generator(device="cuda").manual_seed(T)
    E, D, I, K = 8, 1024, 1408, 2
    dense = Experts.from_tensors(torch.randn(E, 2 * I, D, device="cuda", generator=gen).bfloat16() * 0.02,
                                 torch.randn(E, D, I, device="cuda", generator=gen).bfloat16() * 0.02)
    q = QuantExperts.quantize(dense, quantize)
    lin = quantize(torch.randn(1, 3072, D, device="cuda", generator=gen).bfloat16() * 0.02)
    lin.__class__ = QuantWeight
    w13, w2 = q.w13.dequantize().float(), q.w2.dequantize().float()
    x = torch.randn(T, D, device="cuda", generator=gen).bfloat16()
    w, ids = torch.randn(T, E, device="cuda", generator=gen).softmax(-1).topk(K, dim=-1)
    ref = _moe_reference(x, w13, w2, w, ids)
    ref_lin = x.float() @ lin.dequantize().float().reshape(-1, D).T
    out = {}
    for mode in ("words", "strided", "registers", "registers+ops", "registers+asm"):
        monkeypatch.setattr(FQ, "INT8_BYTE_TILES" if fmt == "int8" else "INT4_BYTE_TILES", mode != "words")
        monkeypatch.setattr(FQ, "INT4_A_SPLIT", mode.split("+")[0])
        monkeypatch.setattr(FQ, "BIASED_TILES", mode.split("+")[1] if "+" in mode else "off")
        out[mode] = (FQ.fused_moe_quant(x, q.w13, q.w2, ids, w, config={"variant": "aligned"}).float(),
                     skinny_gemm_quant(x, lin).float())
    for mode, got_pair in out.items():
        for got, want in zip(got_pair, (ref, ref_lin)):
            assert torch.isfinite(got).all()
            err = ((got - want).norm() / want.norm()).item()
            assert err < 1e-2, (mode, err)
        for got, want in zip(got_pair, out["words"]):
            assert ((got - want).norm() / want.norm()).item() < 1e-2
