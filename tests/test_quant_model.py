"""Guards quantize_ on whole models: what is swapped and what stays full precision, logits near the unquantized
model, every expert path equal on the same codes, the run-settings checks, and the real bytes the roofline counts."""
import dataclasses
import gc
import os
import weakref

import pytest
import torch

from minimoe import qbnb, quant
from minimoe.bench.memory import planned_weight_bytes
from minimoe.bench.roofline import count_params, decode_bytes
from minimoe.experts import Experts
from minimoe.gate import Router
from minimoe.generate import Generator
from minimoe.linear import Linear
from minimoe.loader import build_model, read_config
from minimoe.qexperts import QuantExperts
from minimoe.qweights import QuantMatrix, QuantWeight
from minimoe.runtime import UsageError, check_settings
from minimoe.settings import RunSettings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
try:
    import bitsandbytes  # noqa: F401
    HAVE_BNB = True
except ImportError:
    HAVE_BNB = False
FMTS = [pytest.param(f, marks=pytest.mark.skipif(f in ("nf4", "bnb-int8") and not HAVE_BNB,
                                                 reason="bitsandbytes not installed")) for f in quant.FORMATS]
# logits rel. err (max-norm) of a 3-layer random tiny model against its unquantized self
LOGIT_TOL = {"fp8": 0.15, "fp8-block": 0.15, "int8": 0.03, "bnb-int8": 0.03, "int4": 0.3, "int4-zp": 0.3, "nf4": 0.3}


def build(card, fmt=None, experts="loop", lm_head=False, weights="dummy"):
    s = RunSettings(device="cpu", experts=experts, quant_lm_head=lm_head)
    model, cfg, _ = build_model(card, weights, dtype=torch.float32, settings=s, seed=3)
    if fmt:
        quant.quantize_(model, s, fmt)
    return model


def logits(model, ids):
    return Generator(model, ids.shape[0], ids.shape[1] + 1).append(ids)


@pytest.mark.parametrize("fmt", FMTS)
def test_swaps_linears_and_experts_but_not_router_norms_embeddings_or_head(fmt):
    model = build("qwen2-moe-tiny")                      # a shared expert with a [1, D] gate
    kept = {n: p for n, p in model.named_parameters() if "router" in n or "norm" in n or "embed" in n or "lm_head" in n
            or n.endswith("shared.gate.weight")}
    ids = torch.randint(0, model.cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    before = logits(model, ids)
    cfg = quant.quantize_(model, RunSettings(device="cpu"), fmt)
    for name, m in model.named_modules():
        if isinstance(m, Linear):
            plain = name == "lm_head" or name.endswith("shared.gate")
            assert isinstance(m.weight, torch.Tensor) == plain, name
        assert not (type(m) is Experts), name            # every routed expert layer was swapped
    moe_layers = sum(model.cfg.is_moe_layer(i) for i in range(model.cfg.n_layers))
    assert sum(isinstance(m, QuantExperts) for m in model.modules()) == moe_layers > 0
    params = dict(model.named_parameters())
    assert all(params[n] is p for n, p in kept.items())  # the very same tensors
    assert isinstance(model.layers[0].ffn.router, Router) and cfg.extra["weight_format"]["quant"] == fmt
    err = ((logits(model, ids) - before).abs().max() / before.abs().max()).item()
    assert 0 < err < LOGIT_TOL[fmt], err


def test_quant_lm_head_quantizes_a_tied_head_but_keeps_the_embedding(hf_checkpoint):
    folder, _ = hf_checkpoint("mixtral")                 # tie_word_embeddings
    model = build(str(folder), "int8", lm_head=True, weights="auto")
    assert isinstance(model.lm_head.weight, QuantWeight)
    assert isinstance(model.embed.weight, torch.nn.Parameter) and model.embed.weight.dtype == torch.float32


@pytest.mark.parametrize("fmt", ["int4", "fp8"])
def test_every_expert_path_agrees_on_the_same_codes(fmt):
    """loop (dequantized oracle) == grouped == fused (the kernels, interpreted: int4 here, every format in
    test_quant_kernels.py), prefill logits and greedy decode."""
    model = build("olmoe-tiny", fmt)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 4), generator=torch.Generator().manual_seed(1))
    paths = ("loop", "grouped", "fused") if fmt == "int4" else ("loop", "grouped")
    outs, toks = {}, {}
    for path in paths:
        model.settings.experts = path
        outs[path] = logits(model, ids)
        toks[path] = Generator(model, 2, 7).generate(ids, 2)
    for path in paths[1:]:
        assert ((outs[path] - outs["loop"]).abs().max() / outs["loop"].abs().max()) < 1e-5, path
        assert torch.equal(toks[path], toks["loop"]), path


def test_mla_absorbed_decode_reads_a_quantized_wkv_b_in_the_models_dtype():
    s = RunSettings(device="cpu", dtype="bf16")
    model, _, _ = build_model("deepseek-v2-lite-tiny", "dummy", dtype=torch.bfloat16, settings=s, seed=3)
    quant.quantize_(model, s, "int4")
    wkv_b = model.layers[1].attn.wkv_b.weight
    assert isinstance(wkv_b, QuantWeight) and wkv_b.dequantize().dtype == torch.bfloat16
    out = Generator(model, 1, 12).generate(torch.tensor([[5, 6, 7]]), 4)
    assert out.shape == (1, 4)


@pytest.mark.parametrize("fmt", FMTS)
def test_meta_byte_count_equals_the_built_models_parameters(fmt):
    """bench/roofline counts a quantized model from a meta copy: it must be the real model's bytes."""
    model = build("deepseek-v3-tiny", fmt)               # MLA, shared experts, a dense first layer
    pc = count_params(model.cfg)
    real = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])   # + nf4's codebooks
    assert pc.weight_bytes(4) == real


@pytest.mark.parametrize("fmt,bits", [("int4", 4.25), ("nf4", 4.5), ("fp8", 8.0), ("int8", 8.0)])
def test_roofline_bytes_per_expert_are_the_formats_bits(fmt, bits):
    """Mixtral's real shapes on the meta device: codes + fp32 scales, e.g. int4 g128 = 4 + 32/128 bits."""
    cfg, _ = read_config("mixtral")
    pc = count_params(dataclasses.replace(cfg, extra={**cfg.extra, "weight_format": {"quant": fmt, "lm_head": False}}))
    assert pc.stored.per_expert * 8 / pc.per_expert == pytest.approx(bits, rel=1e-3)
    step = decode_bytes(cfg, pc, 1, 128.0, 2.0, 2)
    assert step["experts"] == pytest.approx(32 * 2 * pc.stored.per_expert)


def test_planned_memory_uses_the_formats_bytes():
    cfg, _ = read_config("mixtral")
    bf16 = planned_weight_bytes(cfg, RunSettings(device="cpu", dtype="bf16"))
    int4 = planned_weight_bytes(cfg, RunSettings(device="cpu", dtype="bf16", quant="int4"))
    fp8 = planned_weight_bytes(cfg, RunSettings(device="cpu", dtype="bf16", quant="fp8"))
    assert 90e9 < bf16 < 95e9 and 46e9 < fp8 < 48e9 and 24e9 < int4 < 27e9    # issue 12: fp8 <= 48 GB, int4 <= 27 GB


def test_settings_checks_name_the_flag(monkeypatch):
    cfg, _ = read_config("olmoe-tiny")
    ok = RunSettings(device="cpu", quant="int4").resolve()
    check_settings(ok, cfg)
    with pytest.raises(UsageError, match="--quant-lm-head needs --quant"):
        check_settings(RunSettings(device="cpu", quant_lm_head=True).resolve(), cfg)
    pre = dataclasses.replace(cfg, extra={**cfg.extra, "quantization_config": {"quant_method": "fp8"}})
    with pytest.raises(UsageError, match="already quantized"):
        check_settings(ok, pre)

    def missing():
        raise ImportError("--quant nf4 / bnb-int8 need bitsandbytes: pip install 'minimoe[bnb]'")
    monkeypatch.setattr(qbnb, "_lib", missing)
    with pytest.raises(UsageError, match="need bitsandbytes"):
        check_settings(RunSettings(device="cpu", quant="nf4").resolve(), cfg)
    with pytest.raises(ValueError, match="--quant"):
        RunSettings(device="cpu", quant="int3").resolve()


def test_an_unknown_experts_subclass_is_refused_not_left_in_bf16():
    class Sharded(Experts):
        pass
    model = build("olmoe-tiny")
    ex = model.layers[0].ffn.experts
    model.layers[0].ffn.experts = Sharded.from_tensors(ex.w13.data, ex.w2.data)
    with pytest.raises(ValueError, match="does not know how to quantize"):
        quant.quantize_(model, RunSettings(device="cpu"), "int8")


def test_each_bf16_expert_layer_is_freed_as_soon_as_its_twin_is_in(monkeypatch):
    """Mixtral in bf16 (93 GB) and its int8 twin (47 GB) do not fit an H200 together: quantize_ must hold at
    most the layer it is working on."""
    model = build("olmoe-tiny")
    olds = [weakref.ref(m) for m in model.modules() if type(m) is Experts]
    alive = []
    real = quant.quantize_experts

    def watched(ex, fmt):
        gc.collect()
        alive.append(sum(r() is not None for r in olds))
        return real(ex, fmt)
    monkeypatch.setattr(quant, "quantize_experts", watched)
    quant.quantize_(model, RunSettings(device="cpu"), "int8")
    gc.collect()
    assert alive == [len(olds) - i for i in range(len(olds))] and all(r() is None for r in olds)


def test_quantized_stacks_are_parameters_that_move_with_the_model():
    model = build("olmoe-tiny", "int4")
    names = [n for n, _ in model.named_parameters()]
    assert "layers.0.ffn.experts.w13.qdata" in names and "layers.0.attn.wqkv.weight.scale" in names
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".qdata" in n)
    assert isinstance(model.layers[0].ffn.experts.w13, QuantMatrix)
