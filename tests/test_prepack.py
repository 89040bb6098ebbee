"""Guards prepack.py: the RMSNorm writes the very pairs pack_pairs would make of its output (every pair format, ragged
widths, with and without the residual add), the quantized dense layer takes them only for that x and only once, and
on the GPU a quantized model decodes the same tokens, graphed, with the norm packing as without."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from minimoe import prepack  # noqa: E402
from minimoe.kernels import fused_moe_quant_pair as P  # noqa: E402
from minimoe.kernels import pair_codes, rmsnorm  # noqa: E402
from test_quant_kernels import DEVICE, FORMATS  # noqa: E402

PAIRED = ["int8", "int4", "int4-g128", "int4-zero", "fp8"]


@pytest.mark.parametrize("fmt", PAIRED)
@pytest.mark.parametrize("T,with_residual", [(1, True), (3, False), (2, True)])
def test_norm_writes_the_pairs_pack_pairs_makes(fmt, T, with_residual):
    gen = torch.Generator().manual_seed(hash((fmt, T)) % 1000)
    N = 72                                                   # not a multiple of int4's groups: padded words are zeros
    w = FORMATS[fmt](torch.randn(1, 24, N, generator=gen).to(DEVICE))
    dtype = torch.float16                                    # the interpreter has no bf16; the GPU runs both
    x = torch.randn(T, N, generator=gen).to(DEVICE, dtype)
    res = torch.randn(T, N, generator=gen).to(DEVICE, dtype) if with_residual else None
    nw = (1 + torch.rand(N, generator=gen)).to(DEVICE, dtype)
    out, s, pairs = rmsnorm.rms_norm_packed(x, nw, 1e-6, res, pair_codes.pack_layout(w))
    ref_out, ref_s = rmsnorm.rms_norm(x, nw, 1e-6, res)
    assert torch.equal(out, ref_out) and (s is None) == (res is None) and (s is None or torch.equal(s, ref_s))
    assert torch.equal(pairs, pair_codes.pack_pairs(out, w))


def test_dense_layer_takes_offered_pairs_once_and_for_that_x_only(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    w = FORMATS["int8"](torch.randn(1, 40, 64, generator=gen).to(DEVICE))
    x = torch.randn(1, 64, generator=gen).to(DEVICE)
    cfg = {"pair": {"down": {"x_packed": True, "BLOCK_K": 32}}}
    want = P.quant_pair_2d(x, w, cfg)
    packs = []
    real = P.pack_pairs
    monkeypatch.setattr(P, "pack_pairs", lambda *a, **k: packs.append(1) or real(*a, **k))
    pair_codes.offer_packed(w, x, real(x, w))
    assert torch.equal(P.quant_pair_2d(x, w, cfg), want) and packs == []          # taken: no pack launch
    assert torch.equal(P.quant_pair_2d(x, w, cfg), want) and packs == [1]         # used up
    other = torch.randn(1, 64, generator=gen).to(DEVICE)
    pair_codes.offer_packed(w, other, real(other, w))                              # pairs of another x
    assert torch.equal(P.quant_pair_2d(x, w, cfg), want) and packs == [1, 1]
    assert pair_codes.take_packed(w, other) is None                               # the mismatch used it up too
    # wrong pairs offered for the right x would show: the layer really reads what it is handed
    pair_codes.offer_packed(w, x, real(2 * x, w))
    assert torch.allclose(P.quant_pair_2d(x, w, cfg), 2 * want, rtol=1e-3, atol=1e-3)


def test_target_only_for_pair_kernel_weights(monkeypatch):
    """No packing on the CPU (no kernels), for a bf16 weight, with PREPACK off, or past the GEMV's rows."""
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(experts="fused", device="cpu", quant="int8").resolve()
    model, cfg, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, device="cpu", settings=s, seed=1)
    attn = model.layers[0].attn
    x = torch.zeros(1, 1, cfg.hidden_size, dtype=torch.bfloat16)
    assert prepack.target(attn, x) is None                   # use_kernels is off on the CPU
    w = attn.wqkv.weight
    monkeypatch.setattr(w, "use_kernels", True)
    monkeypatch.setattr(attn.settings, "ops", "triton")
    from minimoe.kernels import fused_moe_quant_small
    monkeypatch.setattr(fused_moe_quant_small, "decode_variant", lambda *a, **k: "pair")
    monkeypatch.setattr(P, "on_gpu", lambda: True)           # the GPU's measured tiles (the interpreter's never pack)
    assert prepack.target(attn, x) is w                      # int8 dense tiles pack x at T = 1
    assert prepack.target(attn, torch.zeros(8, 1, cfg.hidden_size, dtype=torch.bfloat16)) is None   # > GEMV_MAX_T
    assert prepack.target(attn, x.float()) is None
    monkeypatch.setattr(prepack, "PREPACK", False)
    assert prepack.target(attn, x) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_prepacked_model_decodes_the_same_tokens_graphed(fmt, monkeypatch):
    from minimoe.generate import Generator
    from minimoe.graphs import enable_graphs
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(experts="fused", device="cuda", quant=fmt)
    model, cfg, _ = build_model("mixtral-tiny", "dummy", dtype=torch.bfloat16, device="cuda", settings=s, seed=1)
    calls = []
    real = prepack.norm_packed
    monkeypatch.setattr(prepack, "norm_packed", lambda *a: calls.append(1) or real(*a))
    prompts = torch.randint(0, cfg.vocab_size, (1, 9), device="cuda")

    def tokens(graphs):
        gen = Generator(model, 1, prompts.shape[1] + 13)
        if graphs:
            enable_graphs(gen, prefill_lengths=[prompts.shape[1]])
        return gen.generate(prompts, 12)
    on = tokens(True)
    assert calls, "the norm never packed: the test would compare the default path with itself"
    monkeypatch.setattr(prepack, "PREPACK", False)
    assert torch.equal(on, tokens(True)) and torch.equal(on, tokens(False))
