"""Guards the quantized weight formats: round trips within each format's error bound, the packing, fp8 numerics
against torch's float8 casts, the fp8 activation kernel bit for bit, bitsandbytes' formats where it imports."""
import os

import pytest
import torch

from minimoe import qweights as Q

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

GEN = torch.Generator().manual_seed(0)


def weights(*shape, outliers=True):
    w = torch.randn(*shape, generator=GEN)
    if outliers:                       # a few large values: scales must follow them, codes must not overflow
        w.view(-1)[:: 97] *= 8.0
    return w


@pytest.mark.parametrize("shape", [(5, 40), (3, 7, 200), (1, 1, 8)])
def test_int8_round_trip_within_half_a_step(shape):
    w = weights(*shape)
    q = Q.quantize_int8(w)
    step = q.scale3 if w.dim() == 3 else q.scale3[0]
    assert q.qdata.dtype == torch.int32 and q.qdata.shape[-1] == -(-shape[-1] // 4)
    assert ((q.dequantize()[0 if w.dim() == 2 else slice(None)] - w).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("K,group", [(256, 128), (200, 128), (40, 32), (8, 8)])   # 200, 40: padded to the group
@pytest.mark.parametrize("zero_point", [False, True])
def test_int4_round_trip_within_its_bound_and_padding_is_invisible(K, group, zero_point):
    w = weights(2, 6, K)
    q = Q.quantize_int4(w, group, zero_point)
    Kp = -(-K // group) * group
    assert q.qdata.shape == (2, 6, Kp // 8) and q.scale.shape == (2, 6, Kp // group) and q.K == K
    assert (q.zero is not None) == zero_point
    step = q.scale.repeat_interleave(group, -1)[..., :K]
    err = (q.dequantize() - w).abs()
    if zero_point:
        assert (err <= step + 1e-6).all()                        # a rounded zero point can cost half a step more
    else:   # inside the clipped range half a step; the clipped tail at most 8.75 - 7 steps
        inside = (w >= -8.5 * step) & (w <= 7.5 * step)
        assert (err[inside] <= step[inside] / 2 + 1e-6).all() and (err <= 1.75 * step + 1e-6).all()
        plain = Q.INT4_CLIPS
        try:    # the clip search never does worse than plain absmax scaling, group by group
            Q.INT4_CLIPS = (1.0,)
            plain_err = (Q.quantize_int4(w, group).dequantize() - w) ** 2
        finally:
            Q.INT4_CLIPS = plain
        assert (err ** 2).sum() <= plain_err.sum()
    codes = Q.unpack_words(q.qdata, 4)
    assert codes.min() >= 0 and codes.max() <= 15


def test_int4_refuses_a_group_that_is_not_a_power_of_two_multiple_of_8():
    with pytest.raises(ValueError, match="group size"):
        Q.quantize_int4(weights(2, 96), group=96)


def test_pack_and_unpack_are_inverse_and_low_bits_first():
    for bits in (4, 8):
        u = torch.randint(0, 2 ** bits, (3, 64), generator=GEN, dtype=torch.int32)
        words = Q.pack_words(u, bits)
        assert torch.equal(Q.unpack_words(words, bits), u)
        assert int(words[0, 0]) & (2 ** bits - 1) == int(u[0, 0])          # code 0 sits in the low bits


def test_fp8_per_row_matches_torchs_e4m3_cast_and_its_relative_bound():
    w = weights(4, 9, 64)
    q = Q.quantize_fp8(w)
    assert q.qdata.dtype == torch.float8_e4m3fn and q.scale.shape == (4, 9, 1)
    s = w.abs().amax(-1, keepdim=True) / 448
    assert torch.equal(q.qdata, (w / s).to(torch.float8_e4m3fn))
    normal = (w / s).abs() >= 2 ** -6                             # e4m3 normals keep 3 mantissa bits
    err = (q.dequantize() - w).abs()
    assert (err[normal] <= 2 ** -4 * w.abs()[normal] + 1e-7).all()
    assert (err[~normal] <= 2 ** -10 * s.expand_as(w)[~normal]).all()  # subnormal spacing 2^-9, half of it


def test_fp8_block_scales_are_one_per_128_square_and_dequantize_back():
    w = weights(300, 260)                                          # neither a multiple of 128
    q = Q.quantize_fp8(w, block=128)
    assert q.scale.shape == (3, 3) and q.row_block == 128 and q.group == 128
    tile = w[128:256, 128:256]
    assert torch.isclose(q.scale[1, 1], tile.abs().max() / 448)
    s = q.scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:300, :260]
    assert ((q.dequantize()[0] - w).abs() <= 2 ** -4 * w.abs() + 2 ** -10 * s + 1e-7).all()


def test_all_zero_rows_get_scale_one_and_dequantize_to_zero():
    w = torch.zeros(3, 256)
    for q in (Q.quantize_int8(w), Q.quantize_int4(w), Q.quantize_fp8(w), Q.quantize_int4(w, zero_point=True)):
        assert torch.all(q.scale == 1) and torch.equal(q.dequantize()[0], w)


@pytest.mark.parametrize("group", [0, 128, 32])
def test_fp8_activation_kernel_is_bit_identical_to_torch(group):
    pytest.importorskip("triton")
    from minimoe.kernels.quant_tiles import quant_rows_fp8
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = (torch.randn(7, 300, generator=GEN) * torch.logspace(-4, 3, 300)).to(device)   # subnormals to outliers
    x[3] = 0.0                                                                          # an all-zero row
    q, s = quant_rows_fp8(x, group)
    q_ref, s_ref = Q.quant_rows_fp8(x, group)
    assert torch.equal(s, s_ref) and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert s.shape == (7, 1 if group == 0 else -(-300 // group))


def test_quant_weight_reference_linear_quantizes_activations_only_past_the_weight_only_sizes(monkeypatch):
    """Up to WEIGHT_ONLY_MAX_T[0] rows (the GEMV and the skinny GEMM) fp8 activations stay as they are (W8A16), past it
    they are quantized per token (W8A8, _scaled_mm); with SKINNY_QUANT off the W8A8 boundary is GEMV_MAX_T again."""
    w = Q.quantize_fp8(weights(16, 64), cls=Q.QuantWeight)
    x = torch.randn(Q.WEIGHT_ONLY_MAX_T[0] + 1, 64, generator=GEN)
    dense = x @ w.dequantize().T
    small = w.linear(x[:Q.WEIGHT_ONLY_MAX_T[0]])
    assert torch.allclose(small, dense[:Q.WEIGHT_ONLY_MAX_T[0]], atol=1e-5)      # W8A16 at decode sizes
    q, s = Q.quant_rows_fp8(x)
    assert torch.allclose(w.linear(x), (q.float() * s) @ w.dequantize().T, atol=1e-5)   # W8A8 beyond
    monkeypatch.setattr(Q, "SKINNY_QUANT", False)
    x5 = x[:Q.GEMV_MAX_T + 1]
    q, s = Q.quant_rows_fp8(x5)
    assert torch.allclose(w.linear(x5), (q.float() * s) @ w.dequantize().T, atol=1e-5)
    assert w.shape == (16, 64) and w.nbytes == 16 * 64 + 16 * 4


# ---- bitsandbytes ----------------------------------------------------------------------------------

try:
    import bitsandbytes  # noqa: F401
    HAVE_BNB = True
except ImportError:
    HAVE_BNB = False
needs_bnb = pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes is not installed: nf4 / bnb-int8 not tested")


@needs_bnb
def test_nf4_stores_bitsandbytes_bytes_and_dequantizes_with_the_library():
    from minimoe import qbnb
    import bitsandbytes.functional as F
    w = weights(2, 8, 100)                                         # K padded to 128 for 64-blocks
    q = qbnb.quantize_nf4(w)
    assert q.codes == 1 and q.qdata.shape == (2, 8, 16) and q.scale.shape == (2, 8, 2) and q.K == 100
    packed, state = F.quantize_4bit(torch.nn.functional.pad(w[1], (0, 28)), blocksize=64, quant_type="nf4",
                                    compress_statistics=False)
    assert torch.equal(q.qdata[1].view(torch.uint8).reshape(-1), packed.reshape(-1))
    assert torch.allclose(q.dequantize()[1], F.dequantize_4bit(packed, state)[:, :100])
    absmax = q.scale.repeat_interleave(64, -1)[..., :100]
    assert ((q.dequantize() - w).abs() <= 0.5 * 0.304 * absmax + 1e-6).all()  # NF4s widest gap: -1 to -0.6962


@needs_bnb
def test_bnb_int8_is_llm_int8_vectorwise():
    from minimoe import qbnb
    w = weights(3, 5, 30)
    q = qbnb.quantize_bnb_int8(w)
    assert q.codes == 2 and q.qdata.shape == (3, 5, 8)
    assert ((q.dequantize() - w).abs() <= q.scale / 2 + 1e-5).all()
