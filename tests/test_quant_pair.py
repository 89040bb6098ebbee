"""Guards the packed-pair decode kernels (kernels/fused_moe_quant_pair.py) against dequantize-then-matmul in
float64, on the interpreter's path (ASM False: the same bit fields, layouts, masks and scales as the PTX, summed in
fp32; the PTX itself is checked on the GPU by test_quant_gpu.py): int4 with and without zero points and groups,
int8, ragged tokens, skipped and foreign slots, widths that are not a multiple of a scale group, every tile kind."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from minimoe.kernels import fused_moe_quant_pair as P  # noqa: E402
from minimoe.kernels import fused_moe_quant_small as small  # noqa: E402
from minimoe.kernels.fused_moe_quant import fused_moe_quant  # noqa: E402
from test_quant_kernels import DEVICE, FORMATS, check, make, reference, routing  # noqa: E402

PAIR = {"variant": "pair"}
# x and h become fp16 (times 2^-8) before they meet the codes: fp16 rounding of the activations, 2^-11 relative
TOL = 2e-3
INT = ["int8", "int4", "int4-g128", "int4-zero"]
FP8 = ["fp8", "fp8-block"]         # e4m3 bytes read as int32 words (cvt.rn.f16x2.e4m3x2 on a GPU)


@pytest.mark.parametrize("fmt", INT + FP8)
def test_one_token_over_60_experts(fmt):
    """T = 1, K = 4 of E = 60; I = 40 pads every scale group (h's padding must be finite zeros)."""
    gen = torch.Generator().manual_seed(21)
    q13, q2 = make(fmt, 60, gen)
    x = torch.randn(1, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(1, 4, 60, gen)
    check(fused_moe_quant(x, q13, q2, ids, w, config=PAIR), reference(x, q13, q2, ids, w), TOL)


@pytest.mark.parametrize("fmt", ["int8", "int4-zero", "fp8-block"])
def test_ragged_tokens_skipped_and_foreign_slots(fmt):
    """T = 3 with K = 4, ids -1 (skipped) and ids another rank holds (global 7..66 here): exact zeros."""
    gen = torch.Generator().manual_seed(22)
    q13, q2 = make(fmt, 60, gen)
    x = torch.randn(3, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(3, 4, 80, gen)
    ids[0, 1], ids[2, 3] = -1, -1
    check(fused_moe_quant(x, q13, q2, ids, w, expert_offset=7, config=PAIR), reference(x, q13, q2, ids, w, offset=7),
          TOL)
    none = torch.full((3, 4), 70, device=DEVICE)                                     # no slot is ours
    assert torch.equal(fused_moe_quant(x, q13, q2, none, w, expert_offset=7, config=PAIR), torch.zeros_like(x))


@pytest.mark.parametrize("fmt,tiles", [
    ("int4", {"BLOCK_N": 4, "BLOCK_K": 64, "x_packed": True, "down": {"BLOCK_N": 8, "BLOCK_K": 32, "split": 3}}),
    ("int4-zero", {"BLOCK_N": 8, "BLOCK_K": 128, "wide": True, "x_packed": True,
                   "down": {"BLOCK_N": 2, "BLOCK_K": 64, "wide": True}}),
    ("int8", {"BLOCK_N": 2, "BLOCK_K": 16, "down": {"BLOCK_N": 32, "BLOCK_K": 128, "wide": True}}),
    ("int8", {"BLOCK_N": 16, "BLOCK_K": 256, "x_packed": True, "wide": True,
              "down": {"BLOCK_N": 4, "BLOCK_K": 16, "split": 8}}),
    ("fp8", {"BLOCK_N": 4, "BLOCK_K": 32, "x_packed": True, "down": {"BLOCK_N": 8, "BLOCK_K": 16, "split": 3}}),
    ("fp8-block", {"BLOCK_N": 8, "BLOCK_K": 64, "wide": True, "down": {"BLOCK_N": 2, "BLOCK_K": 32, "wide": True}})])
def test_other_tiles_and_half_precision(fmt, tiles):
    """Steps of one word, of several groups (wide: scales and zero points per word), wider than the reduction,
    x packed by its own kernel, GEMM2 split over 3 and 8 programs (more than the steps of a token: idle shares);
    fp32 and fp16 activations in and out."""
    gen = torch.Generator().manual_seed(23)
    q13, q2 = make(fmt, 8, gen, d=96)
    ids, w = routing(2, 2, 8, gen)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 96, generator=gen).to(DEVICE, dtype)
        out = fused_moe_quant(x, q13, q2, ids, w, config={"variant": "pair", "pair": tiles})
        assert out.dtype == dtype
        check(out, reference(x, q13, q2, ids, w), TOL if dtype == torch.float32 else 4e-3)


@pytest.mark.parametrize("fmt", INT + FP8)
@pytest.mark.parametrize("packed,split", [(False, 1), (True, 1), (True, 2)])
def test_dense_decode_layer(fmt, packed, split):
    """N = 50, K = 72 (padded codes), T = 1 and 3 (a strided x: a transposed view); x packed in the kernel or by
    pack_pairs; split-K over 2."""
    gen = torch.Generator().manual_seed(24)
    w = FORMATS[fmt](torch.randn(1, 50, 72, generator=gen).to(DEVICE))
    for T in (1, 3):
        x = torch.randn(T, 72, generator=gen).to(DEVICE) if T == 1 else torch.randn(72, T, generator=gen).to(DEVICE).T
        tiles = {"x_packed": packed, "split": split, "BLOCK_K": max(32, w.group)}
        got = P.quant_pair_2d(x, w, {"pair": {"down": tiles}})
        check(got, x.double().cpu() @ w.dequantize()[0].double().cpu().T, TOL)


@pytest.mark.parametrize("fmt,tiles", [
    ("int4", {"BLOCK_K": 64, "x_packed": True, "down": {"BLOCK_K": 32, "split": 3}}),
    ("int4-zero", {"BLOCK_N": 8, "BLOCK_K": 128, "wide": True, "x_packed": True,
                   "down": {"BLOCK_N": 2, "BLOCK_K": 64, "wide": True}}),
    ("int8", {"BLOCK_K": 64, "down": {"BLOCK_K": 32, "split": 2}}),
    ("int8", {"BLOCK_N": 4, "BLOCK_K": 256, "x_packed": True, "wide": True, "down": {"BLOCK_K": 128, "wide": True}}),
    ("fp8", {"BLOCK_K": 32, "x_packed": True, "down": {"BLOCK_N": 8, "BLOCK_K": 16, "split": 3}}),
    ("fp8-block", {"BLOCK_N": 8, "BLOCK_K": 128, "wide": True, "down": {"BLOCK_N": 2, "BLOCK_K": 64, "wide": True}})])
def test_chains_of_four_words_equal_one_word_chains(fmt, tiles):
    """chain 4 (pair_quads.py: a quad's fields summed before one conversion) against chain 1 on the same tiles and
    the float64 reference: the interpreter sums the same fields in fp32, so there the two agree to fp32 rounding; masked
    steps (K = 96 is not a whole number of 64-input steps), skipped slots, wide tiles and split-K included."""
    gen = torch.Generator().manual_seed(30)
    q13, q2 = make(fmt, 8, gen, d=96)
    x = torch.randn(3, 96, generator=gen).to(DEVICE)
    ids, w = routing(3, 2, 8, gen)
    ids[1, 0] = -1
    out = {}
    for chain in (1, 4):
        cfg = {**tiles, "chain": chain, "down": {**tiles["down"], "chain": chain}}
        out[chain] = fused_moe_quant(x, q13, q2, ids, w, config={"variant": "pair", "pair": cfg})
    check(out[4], reference(x, q13, q2, ids, w), TOL)
    if DEVICE != "cuda":           # the interpreter's fp32 sums; on a GPU the fp16 chains round differently
        assert torch.allclose(out[4], out[1], rtol=1e-4, atol=1e-5)
    d = FORMATS[fmt](torch.randn(1, 40, 96, generator=gen).to(DEVICE))              # a dense layer, T = 1
    got = P.quant_pair_2d(x[:1], d, {"pair": {"down": {"chain": 4, "BLOCK_K": max(32, d.group)}}})
    check(got, x[:1].double().cpu() @ d.dequantize()[0].double().cpu().T, TOL)


def test_chain_defaults_and_refusals():
    """int4 chains four words by default where its groups hold whole quads (32 inputs), and falls back to one word
    for 16-input groups; int8 experts and int8 dense layers take their own tables; a chain asked for where it does
    not fit, or other than 1 and 4, is one ValueError."""
    from minimoe.qweights import quantize_int4
    gen = torch.Generator().manual_seed(31)
    assert P.pair_config(quantize_int4(torch.randn(4, 32, 64, generator=gen), 32), 64)["chain"] == P.CHAIN[4] == 4
    from minimoe.qweights import quantize_int8
    i8 = quantize_int8(torch.randn(4, 32, 64, generator=gen))
    assert (P.pair_config(i8, 64)["chain"], P.pair_config(i8, 64, dense=True)["chain"]) == (P.CHAIN[8], P.DENSE_CHAIN[8])
    small16 = quantize_int4(torch.randn(2, 16, 64, generator=gen).to(DEVICE), 16)
    assert P.pair_config(small16, 64)["chain"] == 1
    x = torch.randn(1, 64, generator=gen).to(DEVICE)
    assert P.quant_pair_2d(x, small16).shape == (1, 16)                               # the default: chain 1
    for chain in (4, 2):
        with pytest.raises(ValueError, match="chain"):
            P.quant_pair_2d(x, small16, {"pair": {"down": {"chain": chain}}})


def test_split_k_is_deterministic_and_equals_one_program():
    """Split-K adds its partials in a fixed order: repeated calls are bit-identical, and within fp32 rounding
    of the unsplit kernel; skipped slots still give exact zeros."""
    gen = torch.Generator().manual_seed(28)
    q13, q2 = make("int4", 16, gen, d=64)
    x = torch.randn(2, 64, generator=gen).to(DEVICE)
    ids, w = routing(2, 4, 16, gen)
    one = fused_moe_quant(x, q13, q2, ids, w, config={"variant": "pair", "pair": {"down": {"BLOCK_K": 32}}})
    cfg = {"variant": "pair", "pair": {"down": {"BLOCK_K": 32, "split": 4}}}
    a, b = fused_moe_quant(x, q13, q2, ids, w, config=cfg), fused_moe_quant(x, q13, q2, ids, w, config=cfg)
    assert torch.equal(a, b)
    assert torch.allclose(a, one, rtol=1e-5, atol=1e-6)
    none = torch.full((2, 4), -1, device=DEVICE)
    assert torch.equal(fused_moe_quant(x, q13, q2, none, w, config=cfg), torch.zeros_like(x))


def _halves(pairs: torch.Tensor) -> torch.Tensor:
    """int32 pairs -> [..., 2] float64 (low half first)."""
    return pairs.cpu().contiguous().view(torch.float16).view(*pairs.shape, 2).double()


@pytest.mark.parametrize("bits", [4, 8])
def test_paired_order(bits):
    """pack_pairs puts (x[PW·w + s], x[PW·w + s + PW/2]) · 2^-8 at int32 s·KW + w, zeros past K; GEMM1 writes h
    (silu(gate)·up · H_SCALE, fp16) in the same order for GEMM2, zeros in the padded columns."""
    gen = torch.Generator().manual_seed(25)
    fmt = "int4" if bits == 4 else "int8"
    q13, q2 = make(fmt, 4, gen)                                       # D = q13.K, I = 40 (padded to the group)
    pw = 32 // bits
    x = torch.randn(2, q13.K, generator=gen).to(DEVICE)
    got = _halves(P.pack_pairs(x, q13)).view(2, pw // 2, -1, 2)      # [T, s, w, half]
    kw = got.shape[2]
    xs = torch.zeros(2, kw * pw, dtype=torch.float64)
    xs[:, :q13.K] = x.cpu().double() * 2 ** -8
    want = xs.view(2, kw, 2, pw // 2).permute(0, 3, 1, 2)             # [T, s, w, half]
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-7)
    ids = torch.tensor([[1, 3]], device=DEVICE)
    h = _halves(P.gate_up_pair(x[:1], q13, q2, ids, 0).view(torch.int32))  # [2, IP/2, 2]
    w13 = q13.dequantize().double().cpu()
    I_ = q2.K
    for k, e in enumerate((1, 3)):
        g, u = w13[e, :I_] @ x[0].double().cpu(), w13[e, I_:] @ x[0].double().cpu()
        ref = torch.zeros(h.shape[1] * 2, dtype=torch.float64)
        ref[:I_] = torch.nn.functional.silu(g) * u * P.H_SCALE
        ref = ref.view(-1, 2, pw // 2).permute(2, 0, 1).reshape(-1, 2)  # [s·KW + w, half]
        # h is fp16 times 2^-12: small entries are fp16 subnormals (the GPU's fp16 pair sums round them
        # coarser than the interpreter's fp32), so the floor is relative to the largest entry
        assert torch.allclose(h[k], ref, rtol=2e-3, atol=2e-3 * float(ref.abs().max()))


def test_pair_refuses_formats_it_does_not_read():
    """fp8 rows that do not hold whole 4-byte words (K = 98) are not read as words: one error naming what is."""
    gen = torch.Generator().manual_seed(26)
    q13, q2 = make("fp8", 4, gen, d=98)
    x = torch.randn(1, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(1, 1, 4, gen)
    with pytest.raises(ValueError, match="int4 and int8 codes and fp8 in whole words"):
        fused_moe_quant(x, q13, q2, ids, w, config=PAIR)
    with pytest.raises(ValueError, match="unknown decode variant"):
        small.quant_gemv(x, q13, {"variant": "bogus"})
    with pytest.raises(ValueError, match="power of two"):
        q13, q2 = make("int4", 4, gen)
        fused_moe_quant(x[:, :q13.K], q13, q2, ids, w, config={"variant": "pair", "pair": {"BLOCK_K": 96}})


def test_default_is_pair_for_half_activations_on_a_gpu(monkeypatch):
    """DECODE_VARIANT's "pair" serves bf16 / fp16 on a GPU; fp32 and the interpreter keep "gemv"'s exact sums."""
    gen = torch.Generator().manual_seed(27)
    q13, _ = make("int4", 4, gen)
    monkeypatch.setattr(small, "on_gpu", lambda: True)
    assert small.decode_variant(q13, None, torch.bfloat16) == "pair"
    assert small.decode_variant(q13, None, torch.float16) == "pair"
    assert small.decode_variant(q13, None, torch.float32) == "gemv"
    assert small.decode_variant(q13, {"variant": "small"}, torch.bfloat16) == "small"
    monkeypatch.setattr(small, "on_gpu", lambda: False)
    assert small.decode_variant(q13, None, torch.bfloat16) == "gemv"
    monkeypatch.setattr(small, "on_gpu", lambda: True)                 # fp8 as "pair": rows of whole words only
    assert small.decode_variant(make("fp8", 2, gen)[0], None, torch.bfloat16) == "pair"
    assert small.decode_variant(make("fp8", 2, gen, d=98)[0], None, torch.bfloat16) == "gemv"
    q13, q2 = make("fp8", 2, gen, i=42)                                  # D whole words, I = 42 not: w2 decides
    assert small.decode_variant(q13, None, torch.bfloat16) == "pair"
    assert small.decode_variant(q13, None, torch.bfloat16, q2) == "gemv"
    with pytest.raises(ValueError, match="fp8 in whole words"):
        small.decode_variant(q13, {"variant": "pair"}, torch.bfloat16, q2)
    x = torch.randn(1, q13.K, generator=gen).to(DEVICE)
    ids, w = routing(1, 2, 2, gen)
    monkeypatch.setattr(small, "on_gpu", lambda: False)                # the interpreter: the gemv kernels run
    check(small.fused_moe_quant_small(x, q13, q2, ids, w, 0), reference(x, q13, q2, ids, w), 1e-4)


def test_fp8_views_that_are_not_whole_words_are_not_paired():
    """pair_words views fp8 bytes as int32: an offset or outer stride that is not a whole word is refused up front."""
    from minimoe.kernels.pair_codes import pair_supported, pair_words
    import copy
    gen = torch.Generator().manual_seed(29)
    q13, _ = make("fp8", 4, gen)
    assert pair_supported(q13) and pair_words(q13).shape[2] == q13.K // 4
    for view in (q13.qdata[1:3], q13.qdata[:, 8:24]):                  # experts, rows: still whole words
        m = copy.copy(q13)
        m.__dict__["_parameters"] = dict(q13._parameters, qdata=torch.nn.Parameter(view, requires_grad=False))
        assert pair_supported(m) and pair_words(m).shape[:2] == view.shape[:2]
    wide = make("fp8", 4, gen, d=66)[0]                                  # K = 66: outer strides not whole words
    m = copy.copy(wide)
    m.__dict__["_parameters"] = dict(wide._parameters, qdata=torch.nn.Parameter(wide.qdata[:, :, 2:34],
                                                                                requires_grad=False))
    m.K = 32
    assert not pair_supported(m)
