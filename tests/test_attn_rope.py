"""Guards `--attn-rope` (kernels/attn_rope.py): the decode attention kernel fed the raw q/k/v row, doing the q/k norm,
rope and this step's cache write itself, against the unfused path (kernels/rope.py's qkv_rope_cache, then the split
attention) on fresh random inputs: every q/k-norm kind, both rope layouts, GQA / MHA, splits, ragged lengths, one
sequence, OLMoE's clip."""

import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels.attn_rope import RopeIn  # noqa: E402
from minimoe.kernels.decode_attention import decode_attention  # noqa: E402
from minimoe.kernels.rope import qkv_rope_cache  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
ULP = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # |diff| / (|ref| + 1): a few last bits


def _case(B, H, Hkv, d, s_max, qk_norm, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)  # noqa: E731
    qkv = rnd(B, 1, (H + 2 * Hkv) * d) * 2
    lens = torch.randint(1, s_max + 1, (B,), generator=g)
    lens[0], lens[-1] = s_max, 1 if B > 1 else s_max                # the longest cache and a first token
    seq_lens = lens.to(torch.int32).to(DEVICE)
    positions = (lens - 1).to(torch.int64)[:, None].to(DEVICE)
    P = s_max + 3
    ang = torch.rand(P, d // 2, generator=g) * 6.28
    cos, sin = ang.cos().to(DEVICE), ang.sin().to(DEVICE)
    qw = kw = None
    if qk_norm == "full":
        qw, kw = 1 + 0.3 * rnd(H * d), 1 + 0.3 * rnd(Hkv * d)
    elif qk_norm == "head":
        qw, kw = 1 + 0.3 * rnd(d), 1 + 0.3 * rnd(d)
    k_cache = rnd(B, s_max, Hkv, d)
    v_cache = rnd(B, s_max, Hkv, d)
    for b, n in enumerate(lens.tolist()):     # stale rows: the new one must come from this step's k / v
        k_cache[b, n - 1:] = float("nan")
        v_cache[b, n - 1:] = float("nan")
    return qkv, seq_lens, positions, cos, sin, qw, kw, k_cache, v_cache


def _both(B, H, Hkv, d, s_max, qk_norm, dtype, interleave=False, clip=None, seed=0, **kw):
    qkv, seq_lens, positions, cos, sin, qw, kwt, k_cache, v_cache = _case(B, H, Hkv, d, s_max, qk_norm, dtype, seed)
    scale = d ** -0.5
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = qkv_rope_cache(qkv, positions, cos, sin, k_ref, v_ref, H, Hkv, d, qk_norm=qk_norm, q_norm_w=qw,
                       k_norm_w=kwt, eps=1e-6, interleave=interleave, clip_qkv=clip)
    ref = decode_attention(q[:, 0], k_ref, v_ref, seq_lens, scale, **kw)
    rope = RopeIn(positions, cos, sin, qk_norm, qw, kwt, 1e-6, interleave, clip)
    q_raw = qkv[:, 0, :H * d].unflatten(-1, (H, d))
    out = decode_attention(q_raw, k_cache, v_cache, seq_lens, scale, rope=rope, **kw)
    return out, ref, (k_cache, v_cache), (k_ref, v_ref), seq_lens


def _close(a, b, dtype):
    err = ((a.double() - b.double()).abs() / (b.double().abs() + 1)).max().item()
    assert err <= ULP[dtype], f"differs by {err:.2e} > {ULP[dtype]:.0e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qk_norm", [None, "full", "head"])
@pytest.mark.parametrize("H,Hkv,d,interleave", [(4, 2, 64, False), (4, 4, 32, True), (8, 1, 64, False)])
def test_equals_unfused_path(H, Hkv, d, interleave, qk_norm, dtype):
    out, ref, (k, v), (k_ref, v_ref), lens = _both(3, H, Hkv, d, 200, qk_norm, dtype, interleave, seed=H + d)
    assert not out.isnan().any(), "a stale cache row was read"
    _close(out, ref, dtype)
    for b, n in enumerate(lens.tolist()):     # the new row is written; rows before it untouched
        _close(k[b, n - 1], k_ref[b, n - 1], dtype)
        assert torch.equal(v[b, n - 1], v_ref[b, n - 1])
        assert torch.equal(k[b, :n - 1], k_ref[b, :n - 1]) and torch.equal(v[b, :n - 1], v_ref[b, :n - 1])


@pytest.mark.parametrize("max_splits", [1, 3, 64])
def test_the_writer_is_whichever_split_holds_the_new_row(max_splits):
    """One split (direct store), a few, and one tile a split: the new row's program differs each time."""
    out, ref, (k, v), (k_ref, v_ref), _ = _both(2, 4, 2, 64, 300, "head", torch.float32, max_splits=max_splits,
                                                 min_tiles=1, seed=7)
    assert not out.isnan().any()
    _close(out, ref, torch.float32)


def test_olmoe_clip_and_one_sequence():
    out, ref, (k, v), (k_ref, v_ref), lens = _both(1, 4, 4, 32, 70, "full", torch.float16, clip=0.5, seed=3)
    _close(out, ref, torch.float16)
    n = lens[0].item()
    assert torch.equal(v[0, n - 1], v_ref[0, n - 1]) and v_ref[0, n - 1].abs().max() <= 0.5


def test_refuses_what_it_cannot_take():
    qkv, seq_lens, positions, cos, sin, qw, kw, k_cache, v_cache = _case(2, 4, 2, 64, 64, "head", torch.float32, 0)
    q_raw = qkv[:, 0, :4 * 64].unflatten(-1, (4, 64))
    with pytest.raises(ValueError, match="one new token"):
        decode_attention(q_raw[:, None].expand(2, 2, 4, 64), k_cache, v_cache, seq_lens, 0.125,
                         positions=positions.expand(2, 2), rope=RopeIn(positions, cos, sin, "head", qw, kw))
    with pytest.raises(ValueError, match="weights"):
        decode_attention(q_raw, k_cache, v_cache, seq_lens, 0.125, rope=RopeIn(positions, cos, sin, "full", qw, kw))
    with pytest.raises(ValueError, match="separate"):
        decode_attention(q_raw, k_cache, k_cache, seq_lens, 0.125, rope=RopeIn(positions, cos, sin))


@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen3-moe-tiny", "mixtral-tiny", "qwen2-moe-tiny"])
def test_model_attn_rope_equals_apart(card, monkeypatch):
    """Each q/k-norm kind (OLMoE full, Qwen3 per head, Mixtral none, Qwen2-MoE with q/k/v bias) end to end, batch 1
    and a ragged-free batch of 2: the same greedy tokens, logits within a few last bits; the prologue really ran."""
    from conftest import greedy_and_logits
    from minimoe import rope_attention
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    runs = []
    real_run = rope_attention.run
    monkeypatch.setattr(rope_attention, "run", lambda *a: runs.append(a[1].shape[0]) or real_run(*a))
    s = RunSettings(device=str(DEVICE), ops="triton", attn="triton", gemv="torch", fuse_rope="off",
                    attn_rope="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert runs == []
        s.attn_rope = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.attn_rope = "off"
        assert set(runs) == {batch.shape[0]} and len(runs) >= cfg.n_layers * 3   # every layer, every decode step
        runs.clear()
        err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
        assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)


def test_fits_and_settings():
    from minimoe import rope_attention
    from minimoe.kv_cache import KVCache, Step
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    assert RunSettings(device="cpu").resolve().attn_rope == "off"
    with pytest.raises(ValueError, match="--attn triton"):
        RunSettings(device="cpu", attn="sdpa", attn_rope="on").resolve()
    with pytest.raises(ValueError, match="--attn-rope yes: choose"):
        RunSettings(device="cpu", attn_rope="yes").resolve()
    s = RunSettings(device=str(DEVICE), ops="triton", attn="triton", attn_rope="on").resolve()
    model, cfg, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 2, 8, torch.float32, DEVICE)
    attn = model.layers[0].attn
    x = torch.randn(2, 1, cfg.hidden_size, device=DEVICE)
    pos = torch.zeros(2, 1, dtype=torch.int64, device=DEVICE)
    lens = torch.ones(2, dtype=torch.int32, device=DEVICE)
    decode, fresh = Step(pos, lens, 1, False), Step(pos, lens, 1, True)
    assert rope_attention.fits(attn, x, decode, cache)
    assert not rope_attention.fits(attn, x, fresh, cache)                                     # prefill
    assert not rope_attention.fits(attn, torch.randn(2, 2, cfg.hidden_size, device=DEVICE), decode, cache)  # a chunk
    assert not rope_attention.fits(attn, x, decode, KVCache(cfg, 2, 8, torch.float16, DEVICE))  # another cache dtype
    hook = attn.wqkv.register_forward_hook(lambda *a: None)    # a TP plan's q/k norm, calibration
    assert not rope_attention.fits(attn, x, decode, cache)
    hook.remove()
    s.attn_rope = "off"
    assert not rope_attention.fits(attn, x, decode, cache)
    monkey = rope_attention.FORCE
    try:
        rope_attention.FORCE = "on"                                # the in-step A/B knob wins over the setting
        assert rope_attention.fits(attn, x, decode, cache)
    finally:
        rope_attention.FORCE = monkey
