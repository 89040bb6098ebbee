"""Guards minimoe.rope.STEP_ROWS end to end: a forward that gathers its step's cos / sin rows once (model.forward) and
hands them to the q/k norm + rope kernel (attention.py, kernels/rope.py's `rows`) gives the logits of the tables, bit
for bit, with the Triton ops and the PyTorch ones, at batch 1 and 2 and over a prefill and decode steps."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import rope  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("ops", ["torch", "triton"])
@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen3-moe-tiny", "deepseek-v2-lite-tiny"])
def test_rows_equal_tables(card, ops, monkeypatch):
    s = RunSettings(device=DEVICE, ops=ops, fuse_rope="off").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=2)
    prompts = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    for batch in (prompts[:1], prompts):
        monkeypatch.setattr(rope, "STEP_ROWS", False)
        tokens, logits = greedy_and_logits(model, batch, 3)
        monkeypatch.setattr(rope, "STEP_ROWS", True)
        tokens_rows, logits_rows = greedy_and_logits(model, batch, 3)
        assert torch.equal(tokens, tokens_rows) and torch.equal(logits, logits_rows)


def test_gathered_only_where_the_rope_kernel_reads_them(monkeypatch):
    """model._rope_kernel_reads_rows: no gather for MLA, for a one-token step that --fuse-rope's GEMV takes (no q/k
    norm, no clip) or that --fuse-rope-attn's kernel takes; a gather everywhere else the rope kernel runs."""
    from minimoe import rope_attn_fusion
    from minimoe.kv_cache import KVCache
    monkeypatch.setattr(rope, "STEP_ROWS", True)

    def reads(card, batch, n_new, **kw):
        s = RunSettings(device=DEVICE, ops="triton", **kw).resolve()
        model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
        cache = KVCache(cfg, batch, 16, torch.float32, DEVICE)
        return model._rope_kernel_reads_rows(cache.step(n_new, 2))

    assert reads("mixtral-tiny", 1, 1, fuse_rope="off")
    assert not reads("mixtral-tiny", 1, 1, fuse_rope="on")            # --fuse-rope's GEMV rotates at one token
    assert reads("mixtral-tiny", 2, 1, fuse_rope="on")                 # two tokens: the rope kernel
    assert reads("qwen3-moe-tiny", 1, 1, fuse_rope="on")               # a q/k norm: never --fuse-rope's
    assert not reads("qwen3-moe-tiny", 1, 1, attn="triton", fuse_rope_attn="on")
    monkeypatch.setattr(rope_attn_fusion, "AUTO", False)
    assert reads("qwen3-moe-tiny", 1, 1, attn="triton")                # auto with AUTO off: the rope kernel
    assert not reads("deepseek-v2-lite-tiny", 1, 1)                    # MLA reads the tables
    monkeypatch.setattr(rope, "STEP_ROWS", False)
    assert not reads("qwen3-moe-tiny", 1, 1)
