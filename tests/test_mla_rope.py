"""MLA's prologue kernel (kernels/mla_rope.py) and prefill's key (kernels/mla_expand.py) against their PyTorch
twins (ops.py), and the absorbed decode (mla.py) against the expanded form on the same cache."""
import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels.mla_rope import mla_rope_cache  # noqa: E402
from minimoe.ops import mla_rope_cache_torch  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(out, ref, dtype):
    err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e}"
    if dtype != torch.float32:   # every rounding replicated: half results bit-identical almost everywhere
        assert (out != ref).float().mean().item() <= 0.01


def _case(B, S, H, nope, rope, r, S_max, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, H, nope + rope, generator=g).to(dtype).to(DEVICE)
    kv = (torch.randn(B, S, r + rope, generator=g) * 3).to(dtype).to(DEVICE)
    # distinct positions per sequence, anywhere in the cache (ragged, not starting at 0)
    positions = torch.stack([torch.randperm(S_max, generator=g)[:S] for _ in range(B)]).to(DEVICE)
    P = S_max + 4
    ang = torch.rand(P, rope // 2, generator=g) * 6.0
    cos, sin = ang.cos().to(DEVICE), ang.sin().to(DEVICE)
    w = (1 + 0.1 * torch.randn(r, generator=g)).to(dtype).to(DEVICE)
    latent = torch.full((B, S_max, r + rope), float("nan"), dtype=dtype, device=DEVICE)
    return q, kv, positions, cos, sin, latent, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("B,S,H,nope,rope,r", [(1, 1, 16, 128, 64, 512), (3, 2, 4, 16, 8, 24),
                                               (2, 5, 3, 8, 12, 20), (1, 1, 1, 16, 16, 32)])
@pytest.mark.parametrize("in_place", [False, True])
def test_mla_rope_cache_matches_torch(B, S, H, nope, rope, r, interleave, dtype, in_place):
    """Odd head counts, rope/2 and r not powers of two, ragged positions, q_pe written in place
    (prefill) or into a strided slice of another buffer (decode); rows outside positions untouched."""
    q, kv, positions, cos, sin, latent, w = _case(B, S, H, nope, rope, r, 9, dtype, seed=H * r + S)
    q_ref, lat_ref = q.clone(), latent.clone()
    if in_place:
        out, out_ref = q[..., nope:], q_ref[..., nope:]
    else:
        buf = torch.full((B, S, H, r + rope), float("nan"), dtype=dtype, device=DEVICE)
        buf_ref = buf.clone()
        out, out_ref = buf[..., r:], buf_ref[..., r:]
    mla_rope_cache(q, kv, positions, cos, sin, latent, w, 1e-6, nope=nope, interleave=interleave, q_pe_out=out)
    mla_rope_cache_torch(q_ref, kv, positions, cos, sin, lat_ref, w, 1e-6, nope=nope, interleave=interleave,
                         q_pe_out=out_ref)
    _close(out, out_ref, dtype)
    assert torch.equal(q[..., :nope], q_ref[..., :nope]), "q_nope must not be touched"
    if not in_place:
        assert buf[..., :r].isnan().all(), "only the rope columns of the output buffer are written"
    written = torch.zeros(latent.shape[:2], dtype=torch.bool, device=DEVICE)
    written[torch.arange(B, device=DEVICE)[:, None], positions] = True
    assert latent[~written].isnan().all() and not latent[written].isnan().any()
    _close(latent[written], lat_ref[written], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,S,H,nope,v,rope", [(1, 1, 16, 128, 128, 64), (2, 5, 3, 8, 8, 4), (3, 7, 5, 12, 20, 6),
                                               (1, 33, 1, 16, 16, 16), (2, 13, 16, 128, 128, 64)])
def test_mla_expand_k_equals_cat(B, S, H, nope, v, rope, dtype):
    """The one-pass key (kernels/mla_expand.py) is torch.cat's, bit for bit: k_pe read from a strided view of a
    latent cache, odd head counts and widths, several tokens a program, a ragged last program."""
    from minimoe.kernels.mla_expand import mla_expand_k
    from minimoe.ops import mla_expand_k_torch
    g = torch.Generator().manual_seed(B * 100 + S + H)
    kv = torch.randn(B, S, H, nope + v, generator=g).to(dtype).to(DEVICE)
    latent = torch.randn(B, S + 3, 24 + rope, generator=g).to(dtype).to(DEVICE)
    k_pe = latent[:, :S, 24:]
    k = mla_expand_k(kv, k_pe, nope)
    assert k.is_contiguous() and torch.equal(k, mla_expand_k_torch(kv, k_pe, nope))
    assert mla_expand_k(kv[:, :0], k_pe[:, :0], nope).shape == (B, 0, H, nope + rope)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", [64, 12, 2])
def test_split_pairs_equals_strided_pairs(dtype, rope, monkeypatch):
    """Interleaved pairs taken apart in registers (mla_rope.SPLIT_PAIRS) give the stride-2 loads' bits exactly: the
    latent row and q_pe, rope/2 a power of 2 or not (masked columns past rope)."""
    from minimoe.kernels import mla_rope
    outs = []
    for split in (True, False):
        monkeypatch.setattr(mla_rope, "SPLIT_PAIRS", split)
        q, kv, positions, cos, sin, latent, w = _case(3, 4, 5, 8, rope, 24, 9, dtype, seed=rope)
        mla_rope_cache(q, kv, positions, cos, sin, latent, w, 1e-6, nope=8, interleave=True, q_pe_out=q[..., 8:])
        outs.append((q, latent))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1].nan_to_num(7.0), outs[1][1].nan_to_num(7.0))


def test_mla_rope_cache_empty_batch_is_a_no_op():
    q, kv, positions, cos, sin, latent, w = _case(1, 0, 2, 8, 8, 16, 4, torch.float32, seed=0)
    mla_rope_cache(q, kv, positions, cos, sin, latent, w, 1e-6, nope=8, interleave=True, q_pe_out=q[..., 8:])
    assert latent.isnan().all()


@pytest.mark.parametrize("ops_name", ["torch", "triton"])
@pytest.mark.parametrize("card", ["deepseek-v2-lite-tiny", "deepseek-v3-tiny"])
def test_absorbed_decode_equals_expanded_prefill(card, ops_name):
    """The absorbed decode (one token, and a 2-token append that reads the latent cache) gives the
    logits of one expanded prefill over the whole sequence (float64 on the CPU, both op sets)."""
    from minimoe.generate import Generator
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    # float64 under the interpreter; float32 on a GPU (Triton's tl.dot has no float64 there)
    # (the Triton op set computes in fp32 inside its kernels: a float64 model agrees to fp32 rounding)
    dtype, tol = (torch.float64, 1e-9 if ops_name == "torch" else 1e-5) if DEVICE.type == "cpu" else (torch.float32, 1e-4)
    s = RunSettings(ops=ops_name, attn="sdpa" if ops_name == "torch" else "triton", device=DEVICE.type).resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=dtype, device=DEVICE, settings=s)
    B, L = 2, 7
    tokens = torch.randint(0, cfg.vocab_size, (B, L), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    gen = Generator(model, B, 16)
    full = gen.append(tokens)                                                   # [B, L, V]
    gen.reset()
    parts = [gen.append(tokens[:, :4]), gen.append(tokens[:, 4:5]), gen.append(tokens[:, 5:7])]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=tol, atol=tol)


@pytest.mark.parametrize("card", ["deepseek-v2-lite-tiny", "deepseek-v3-tiny"])
def test_prefill_one_pass_equals_cat(card, monkeypatch):
    """mla.PREFILL_ONE_PASS (the one-pass key) gives the prefill logits of the cat (Triton op set; fp32 on either
    device)."""
    from minimoe import mla
    from minimoe.generate import Generator
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(ops="triton", attn="triton", device=DEVICE.type).resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s)
    tokens = torch.randint(0, cfg.vocab_size, (3, 9), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out = {}
    for one_pass in (True, False):
        monkeypatch.setattr(mla, "PREFILL_ONE_PASS", one_pass)
        gen = Generator(model, 3, 16)
        out[one_pass] = gen.append(tokens)
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-5)
