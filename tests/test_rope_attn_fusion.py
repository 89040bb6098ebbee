"""Guards `--fuse-rope-attn` (rope_attn_fusion.py) end to end: the engine with the q/k norm + rope + cache write inside
the decode attention kernel gives the greedy tokens and (fp32) logits of the two launches, on every attention family
it takes (a full q/k norm and a clip, per-head norms, none), at batch 1 and 2; and it runs only where it can."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import rope_attn_fusion  # noqa: E402
from minimoe.kv_cache import KVCache  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("card,clip", [("olmoe-tiny", None), ("olmoe-tiny", 0.5), ("qwen3-moe-tiny", None),
                                       ("mixtral-tiny", None)])
def test_model_fused_equals_apart(card, clip, monkeypatch):
    calls = []
    real = rope_attn_fusion.run
    monkeypatch.setattr(rope_attn_fusion, "run", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    s = RunSettings(device=DEVICE, ops="triton", attn="triton", fuse_rope="off", fuse_rope_attn="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    if clip is not None:                                              # OLMoE's optional clip_qkv, on every layer
        for layer in model.layers:
            layer.attn.cfg = dataclasses.replace(layer.attn.cfg, clip_qkv=clip)
    prompts = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        apart_tokens, apart_logits = greedy_and_logits(model, batch, 3)
        assert calls == []
        s.fuse_rope_attn = "on"
        fused_tokens, fused_logits = greedy_and_logits(model, batch, 3)
        s.fuse_rope_attn = "off"
        assert len(calls) == cfg.n_layers * 3 and set(calls) == {batch.shape[0]}   # 3 decode steps, every layer
        calls.clear()
        err = ((fused_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
        assert err <= 1e-5, err
        assert torch.equal(fused_tokens, apart_tokens)


def test_fits_only_where_it_can_run(monkeypatch):
    s = RunSettings(device=DEVICE, ops="triton", attn="triton", fuse_rope_attn="on").resolve()
    model, cfg, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    cache = KVCache(cfg, 3, 8, torch.float32, DEVICE)
    attn = model.layers[1].attn
    width = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    qkv = torch.randn(2, 1, width, device=DEVICE)
    assert rope_attn_fusion.fits(attn, qkv, cache.step(2, 2), cache)
    assert not rope_attn_fusion.fits(attn, torch.randn(2, 3, width, device=DEVICE), cache.step(2, 2), cache)
    assert not rope_attn_fusion.fits(attn, qkv, cache.step(2, 0), cache)                   # a fresh prefill
    assert not rope_attn_fusion.fits(attn, qkv.half(), cache.step(2, 2), cache)            # cache in another dtype
    s.fuse_rope_attn = "auto"
    monkeypatch.setattr(rope_attn_fusion, "AUTO", False)
    assert not rope_attn_fusion.fits(attn, qkv, cache.step(2, 2), cache)
    monkeypatch.setattr(rope_attn_fusion, "AUTO", True)
    assert rope_attn_fusion.fits(attn, qkv, cache.step(2, 2), cache)
    s.attn = "sdpa"
    assert not rope_attn_fusion.fits(attn, qkv, cache.step(2, 2), cache)


def test_settings_resolution():
    assert RunSettings(device="cpu").resolve().fuse_rope_attn == "off"                     # torch ops on a CPU
    assert RunSettings(device="cpu", ops="triton", attn="triton").resolve().fuse_rope_attn == "auto"
    assert RunSettings(device="cpu", ops="triton", attn="triton", fuse_rope_attn="on").resolve().fuse_rope_attn == "on"
    with pytest.raises(ValueError, match="--fuse-rope-attn on .*got --ops torch, --attn sdpa"):
        RunSettings(device="cpu", fuse_rope_attn="on").resolve()
    with pytest.raises(ValueError, match="--fuse-rope-attn yes"):
        RunSettings(fuse_rope_attn="yes").resolve()
