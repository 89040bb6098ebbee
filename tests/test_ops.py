"""Guards the ops table (ops.py): each Triton op (interpreted on a CPU) equals its PyTorch twin end to end
on the tiny families when `--ops triton` / `--gemv triton` are flipped on one built model, and the Triton
ops really ran."""
import dataclasses

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import linear, ops  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GQA + full q/k norm + clip, top-k-then-softmax router (gate GEMV + top-k in one kernel), shared experts +
# biases, per-head q/k norm, and MLA (whose fp32 gate keeps the generic router path in bf16)
CARDS = ["olmoe-tiny", "mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "deepseek-v2-lite-tiny"]


@pytest.fixture
def counted(monkeypatch):
    """Count calls of every Triton op and of the GEMV kernel."""
    calls = {}

    def wrap(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper
    triton_ops = ops.OPS["triton"]
    fields = ("rms_norm", "qkv_rope_cache", "mla_rope_cache", "silu_mul", "route_topk", "gate_route", "norm_gate_route")
    monkeypatch.setitem(ops.OPS, "triton", dataclasses.replace(
        triton_ops, **{f: wrap(f, getattr(triton_ops, f)) for f in fields}))
    monkeypatch.setattr(linear._gemv, "gemv", wrap("gemv", linear._gemv.gemv))
    ops._bound.cache_clear()
    yield calls
    ops._bound.cache_clear()


@pytest.mark.parametrize("splitk", [False, True])
@pytest.mark.parametrize("card", CARDS)
def test_triton_ops_equal_torch_ops(card, splitk, counted, monkeypatch):
    """splitk: every gate goes through the split-K router GEMV (the tiny gates are below its size
    threshold otherwise), so its engine wiring is covered as well as the one-program kernel's."""
    if splitk:
        monkeypatch.setattr(ops, "SPLITK_GATE_MIN_BYTES", 0)
        monkeypatch.setattr(ops._norm_route, "MAX_GATE_BYTES", 0)
    s = RunSettings(experts="grouped", attn="sdpa", ops="torch", gemv="torch", device=DEVICE)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (2, 3), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    plain_tokens, plain_logits = greedy_and_logits(model, prompts, 4)
    assert counted == {}
    s.ops = s.gemv = "triton"
    fast_tokens, fast_logits = greedy_and_logits(model, prompts, 4)
    assert counted["rms_norm"] > 0 and counted["gemv"] > 0
    assert ("qkv_rope_cache" in counted) == (cfg.attention != "mla")
    assert ("mla_rope_cache" in counted) == (cfg.attention == "mla")
    dense_mlp = bool(cfg.shared_intermediate_size) or any(not cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    assert ("silu_mul" in counted) == dense_mlp
    fusable = cfg.router in ("softmax_topk", "topk_softmax") and not cfg.router_bias
    gate_fits = fusable                          # fp32 here: DeepSeek's fp32 gate matches the activations
    assert ("gate_route" in counted) == gate_fits
    err = ((fast_logits - plain_logits).abs().max() / plain_logits.abs().max()).item()
    assert err <= 1e-4, err
    assert torch.equal(fast_tokens, plain_tokens)
    # --fold-norm: the MoE layers' RMSNorm inside the router's kernel (split-K or one program per token), at
    # one token a step: batch 1
    assert "norm_gate_route" not in counted
    one = prompts[:1]
    s.ops, s.gemv = "torch", "torch"
    plain_tokens, plain_logits = greedy_and_logits(model, one, 4)
    s.ops, s.gemv, s.fold_norm = "triton", "triton", "on"
    fold_tokens, fold_logits = greedy_and_logits(model, one, 4)
    assert ("norm_gate_route" in counted) == gate_fits
    err = ((fold_logits - plain_logits).abs().max() / plain_logits.abs().max()).item()
    assert err <= 1e-4, err
    assert torch.equal(fold_tokens, plain_tokens)


def test_ops_for_binds_pdl_into_every_triton_op():
    s = RunSettings(ops="triton", pdl="on")
    bound = ops.ops_for(s)
    assert bound.rms_norm.keywords == {"pdl": True} and bound.route_topk.keywords == {"pdl": True}
    assert ops.ops_for(RunSettings(ops="triton", pdl="off")) is ops.OPS["triton"]
    assert ops.ops_for(None) is ops.TORCH_OPS
