"""Absorbed MLA's two projections folded into neighbouring launches: q's absorption inside the prologue kernel
(kernels/mla_rope.py `absorb`) and W_uv inside the split attention's merge (kernels/mla_merge_uv.py), each against
the batched GEMMs they replace, on fresh random inputs and on the tiny DeepSeek cards."""
import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels import mla_rope  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402
from minimoe.kernels.mla_merge_uv import merge_uv, merge_uv_torch  # noqa: E402
from minimoe.ops import mla_rope_cache_torch  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _close(out, ref, dtype):
    err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("w_early", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,NS,L,N,chunk", [(1, 16, 9, 512, 128, 32), (3, 3, 5, 24, 20, 4), (2, 1, 1, 32, 16, 64),
                                             (4, 2, 64, 64, 40, 1)])
def test_merge_uv_matches_merge_then_bmm(B, H, NS, L, N, chunk, dtype, w_early, monkeypatch):
    """Ragged lengths (a sequence using one split, one using all, lengths past s_max clamped); splits a sequence
    does not reach hold garbage that must not be read; N not a multiple of the program's columns; W_uv's tile
    loaded after the merge or before it."""
    from minimoe.kernels import mla_merge_uv
    monkeypatch.setattr(mla_merge_uv, "W_EARLY", w_early)
    g = torch.Generator().manual_seed(B * 100 + NS)
    s_max = NS * chunk
    lens = torch.randint(1, s_max + 1, (B,), generator=g)
    lens[0] = 1
    lens[-1] = s_max + 7 if B > 1 else lens[-1]
    seq_lens = lens.to(torch.int32).to(DEVICE)
    part = torch.randn(B, H, NS, L, generator=g).to(DEVICE)
    lse = (torch.randn(B, H, NS, generator=g) * 4).to(DEVICE)
    n_valid = (lens.clamp(max=s_max) + chunk - 1) // chunk
    for b in range(B):                                    # never-written splits: NaN, as an uninitialised buffer
        part[b, :, int(n_valid[b]):] = float("nan")
        lse[b, :, int(n_valid[b]):] = float("nan")
    w_uv = (torch.randn(H, N, L, generator=g) / L ** 0.5).to(dtype).to(DEVICE)
    out = merge_uv(part, lse, seq_lens, w_uv, s_max, chunk, NS)
    ref = merge_uv_torch(part, lse, seq_lens, w_uv, s_max, chunk)
    assert out.shape == (B, H, N) and out.dtype == dtype and not out.isnan().any()
    _close(out, ref, dtype)


def test_merge_uv_refuses_mismatched_shapes():
    part, lse = torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="do not match"):                  # a strided lse
        merge_uv(part, torch.zeros(1, 2, 6)[..., ::2], torch.ones(1, dtype=torch.int32), torch.zeros(2, 4, 8), 12, 4, 3)
    with pytest.raises(ValueError, match="do not match"):
        merge_uv(part, lse, torch.ones(1, dtype=torch.int32), torch.zeros(2, 4, 16), 12, 4, 3)
    with pytest.raises(ValueError, match="do not match"):
        merge_uv(part, lse, torch.ones(1, dtype=torch.int32), torch.zeros(2, 4, 8), 12, 4, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,r,rope,N,S_max", [(1, 16, 64, 16, 32, 40), (3, 4, 32, 16, 24, 9), (2, 2, 16, 16, 16, 1)])
def test_decode_attention_w_uv_equals_attention_then_bmm(B, H, r, rope, N, S_max, dtype):
    """The absorbed MLA layout (one kv head of r + rope, V the first r columns of the same latent), ragged lengths
    (one of length 1: a single split, which merge_uv still reads as partials)."""
    g = torch.Generator().manual_seed(H * r + B)
    latent = torch.randn(B, S_max, r + rope, generator=g).to(dtype).to(DEVICE)
    q = torch.randn(B, H, r + rope, generator=g).to(dtype).to(DEVICE)
    lens = torch.randint(1, S_max + 1, (B,), generator=g)
    lens[0] = 1
    seq_lens = lens.to(torch.int32).to(DEVICE)
    w_uv = (torch.randn(H, N, r, generator=g) / r ** 0.5).to(dtype).to(DEVICE)
    k, v = latent[:, :, None, :], latent[:, :, None, :r]
    out = decode_attention(q, k, v, seq_lens, 0.1, w_uv=w_uv)
    o_lat = decode_attention(q, k, v, seq_lens, 0.1)                                         # [B, H, r]
    ref = torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)             # [B, H, N]
    assert out.shape == (B, H, N) and out.dtype == dtype
    _close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,H,nope,rope,r", [(1, 1, 16, 128, 64, 512), (3, 1, 3, 16, 8, 24), (2, 2, 2, 8, 16, 40),
                                               (3, 2, 2, 16, 8, 32), (1, 1, 2, 24, 8, 96), (2, 1, 3, 40, 16, 200)])
def test_rope_cache_absorb_matches_torch(B, S, H, nope, rope, r, dtype, monkeypatch):
    """q_lat = q_nope @ W_uk per head, fused (at most ABSORB_MAX_T = 4 tokens) or by the bmm after the launch (6
    tokens), into the first r columns of the attention's query buffer (latent widths of several 64-column programs
    with a partial last one, nope not a power of two); the rope columns and the cache as without."""
    monkeypatch.setattr(mla_rope, "ABSORB_MAX_T", 4)
    g = torch.Generator().manual_seed(B * S * H + r)
    q = torch.randn(B, S, H, nope + rope, generator=g).to(dtype).to(DEVICE)
    kv = torch.randn(B, S, r + rope, generator=g).to(dtype).to(DEVICE)
    S_max = 8
    positions = torch.stack([torch.randperm(S_max, generator=g)[:S] for _ in range(B)]).to(DEVICE)
    ang = torch.rand(S_max, rope // 2, generator=g) * 6.0
    cos, sin = ang.cos().to(DEVICE), ang.sin().to(DEVICE)
    w = (1 + 0.1 * torch.randn(r, generator=g)).to(dtype).to(DEVICE)
    w_kvb = (torch.randn(H, nope + 16, r, generator=g) / nope ** 0.5).to(dtype).to(DEVICE)
    w_uk = w_kvb[:, :nope]                                                     # a view, as mla._split_wkv_b gives
    outs = []
    for fn in (mla_rope.mla_rope_cache, mla_rope_cache_torch):
        latent = torch.zeros(B, S_max, r + rope, dtype=dtype, device=DEVICE)
        buf = torch.full((B, S, H, r + rope), float("nan"), dtype=dtype, device=DEVICE)
        fn(q, kv, positions, cos, sin, latent, w, 1e-6, nope=nope, interleave=True, q_pe_out=buf[..., r:],
           absorb=(w_uk, buf[..., :r]))
        outs.append((buf, latent))
    (buf, latent), (buf_ref, lat_ref) = outs
    assert not buf.isnan().any()
    _close(buf[..., :r], buf_ref[..., :r], dtype)
    _close(buf[..., r:], buf_ref[..., r:], dtype)
    _close(latent, lat_ref, dtype)


@pytest.mark.parametrize("card", ["deepseek-v2-lite-tiny", "deepseek-v3-tiny"])
def test_fused_absorbed_decode_same_logits(card, monkeypatch):
    """A tiny DeepSeek model decoding 1- and 3-sequence batches with both folds on gives the logits (fp32 rounding)
    and greedy tokens of the batched-GEMM path (Triton op set and attention)."""
    from minimoe import mla
    from minimoe.generate import Generator
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(ops="triton", attn="triton", device=DEVICE.type).resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s)
    for B in (1, 3):
        prompt = torch.randint(0, cfg.vocab_size, (B, 5), generator=torch.Generator().manual_seed(B)).to(DEVICE)
        runs = {}
        for fused in (False, True):
            monkeypatch.setattr(mla, "MERGE_UV_MAX_B", 4 if fused else 0)
            monkeypatch.setattr(mla_rope, "ABSORB_MAX_T", 4 if fused else 0)
            gen = Generator(model, B, 16)
            tok = gen.prefill(prompt)
            logits, toks = [], [tok]
            for _ in range(3):
                logits.append(gen.append(tok[:, None])[:, -1])
                tok = logits[-1].argmax(-1)
                toks.append(tok)
            runs[fused] = (torch.stack(logits), torch.stack(toks))
        torch.testing.assert_close(runs[True][0], runs[False][0], rtol=2e-5, atol=2e-5)
        assert torch.equal(runs[True][1], runs[False][1])


def test_rope_cache_absorb_edges(monkeypatch):
    """No tokens: nothing written, both twins; a W_uk whose latent width is not the cache's is refused."""
    monkeypatch.setattr(mla_rope, "ABSORB_MAX_T", 4)
    H, nope, rope, r = 2, 8, 8, 16
    q = torch.randn(1, 0, H, nope + rope, device=DEVICE)
    kv = torch.randn(1, 0, r + rope, device=DEVICE)
    positions = torch.zeros(1, 0, dtype=torch.long, device=DEVICE)
    cos = sin = torch.ones(4, rope // 2, device=DEVICE)
    latent = torch.zeros(1, 4, r + rope, device=DEVICE)
    w = torch.ones(r, device=DEVICE)
    buf = torch.empty(1, 0, H, r + rope, device=DEVICE)
    for fn in (mla_rope.mla_rope_cache, mla_rope_cache_torch):
        fn(q, kv, positions, cos, sin, latent, w, 1e-6, nope=nope, interleave=True, q_pe_out=buf[..., r:],
           absorb=(torch.randn(H, nope, r, device=DEVICE), buf[..., :r]))
    assert not latent.any()
    q, kv = torch.randn(1, 1, H, nope + rope, device=DEVICE), torch.randn(1, 1, r + rope, device=DEVICE)
    buf = torch.empty(1, 1, H, 2 * r + rope, device=DEVICE)
    with pytest.raises(AssertionError):
        pos = torch.zeros(1, 1, dtype=torch.long, device=DEVICE)
        mla_rope.mla_rope_cache(q, kv, pos, cos, sin, latent, w, 1e-6, nope=nope, interleave=True,
                                q_pe_out=buf[..., 2 * r:],
                                absorb=(torch.randn(H, nope, 2 * r, device=DEVICE), buf[..., :2 * r]))


def test_fused_absorbed_decode_with_a_quantized_wkv_b(monkeypatch):
    """An int8 DeepSeek-V2 tiny model (wkv_b quantized, dequantized once a step for both folds) decodes the folded
    path's logits as the batched-GEMM path's (fp32, Triton op set and attention)."""
    from minimoe import mla, quant
    from minimoe.generate import Generator
    from minimoe.loader import build_model
    from minimoe.qweights import QuantWeight
    from minimoe.settings import RunSettings
    s = RunSettings(ops="triton", attn="triton", device=DEVICE.type).resolve()
    model, cfg, _ = build_model("deepseek-v2-lite-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s)
    quant.quantize_(model, s, "int8")
    assert isinstance(model.layers[1].attn.wkv_b.weight, QuantWeight)
    prompt = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(7)).to(DEVICE)
    runs = {}
    for fused in (False, True):
        monkeypatch.setattr(mla, "MERGE_UV_MAX_B", 4 if fused else 0)
        monkeypatch.setattr(mla_rope, "ABSORB_MAX_T", 4 if fused else 0)
        gen = Generator(model, 2, 16)
        tok = gen.prefill(prompt)
        first = gen.append(tok[:, None])[:, -1]                          # two one-token decode steps
        runs[fused] = torch.stack([first, gen.append(first.argmax(-1)[:, None])[:, -1]])
    torch.testing.assert_close(runs[True], runs[False], rtol=2e-5, atol=2e-5)
