"""Guards the folded decode kernels (settings.gemv: Triton GEMVs with the RMSNorms folded in;
settings.fused_ops: one kernel for norm + router + top-k) against the plain path, end to end on
the tiny families: same logits, same tokens."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`
pytest.importorskip("triton")

from minimoe.config import RunSettings  # noqa: E402
from minimoe.generate import Generator  # noqa: E402
from minimoe.layers import folds_norms  # noqa: E402
from minimoe.loader import build_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GQA + full q/k norm + clip, top-k-then-softmax router, shared experts + biases, per-head q/k norm,
# and MLA (its attention does not fold; its fp32 gate folds only when the model runs in fp32).
CARDS = [("olmoe-tiny", 12), ("mixtral-tiny", 3), ("qwen2-moe-tiny", 3), ("qwen3-moe-tiny", 3),
         ("deepseek-v2-lite-tiny", 3)]


def _run(model, prompts, steps):
    """Greedy tokens [B, steps] and the logits of the first decode step [B, V]."""
    gen = Generator(model, prompts.shape[0], prompts.shape[1] + steps + 1)
    with torch.inference_mode():
        tok = gen.prefill(prompts)
        step = gen.cache.step(1, gen.pos)
        logits = model(tok[:, None], step, gen.cache, last_only=True)
    return gen.generate(prompts, steps), logits


@pytest.mark.parametrize("card,prompt_len", CARDS)  # 2 x 3 tokens: the prefill folds too; 2 x 12: it does not
def test_folded_equals_plain(card, prompt_len, monkeypatch):
    from minimoe.kernels import gemv, norm_route
    calls = {"gemv": 0, "norm_route": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(gemv, "gemv", counted("gemv", gemv.gemv))
    monkeypatch.setattr(norm_route, "norm_route", counted("norm_route", norm_route.norm_route))
    # the other kernels are covered elsewhere; the interpreter is slow, so only the folded ones run here
    s = RunSettings(experts="grouped", attn="sdpa", fused_ops=False)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(5))
    prompts = prompts.to(DEVICE)
    plain_tokens, plain_logits = _run(model, prompts, 4)
    assert calls == {"gemv": 0, "norm_route": 0}
    s.gemv = s.fused_ops = True
    folded_tokens, folded_logits = _run(model, prompts, 4)
    assert calls["gemv"] > 0
    gate_dtype_ok = not cfg.router_fp32 or model.embed.weight.dtype == torch.float32
    assert (calls["norm_route"] > 0) == (cfg.router in ("softmax_topk", "topk_softmax") and gate_dtype_ok)
    err = ((folded_logits - plain_logits).abs().max() / plain_logits.abs().max()).item()
    assert err <= 1e-4, err
    assert torch.equal(folded_tokens, plain_tokens)


def test_fold_applies_only_at_decode_sizes():
    s = RunSettings(gemv=True)
    from minimoe.kernels.gemv import MAX_T
    assert folds_norms(s, 1) and folds_norms(s, MAX_T)
    assert not folds_norms(s, MAX_T + 1) and not folds_norms(s, 0)
    assert not folds_norms(RunSettings(gemv=False), 1)
