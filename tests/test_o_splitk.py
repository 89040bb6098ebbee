"""Guards the o projection split over K (o_splitk.py, kernels/rmsnorm_parts.py): the norm kernel summing the float32
partials gives the unsplit path's residual stream and norm (within the fp32 order of the sums), the split partials
add up to the projection, whole models give the same greedy tokens and logits within rounding on every family's tiny
card, and the split runs only where it fits."""
from __future__ import annotations

import pytest
import torch

from conftest import greedy_and_logits

pytest.importorskip("triton")

from minimoe import o_splitk  # noqa: E402
from minimoe.kernels.rmsnorm_parts import rms_norm_parts  # noqa: E402
from minimoe.linear import Linear  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.ops import rms_norm_torch  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S,T,N,residual", [(1, 1, 40, True), (2, 5, 72, True), (4, 3, 2048, True),
                                             (3, 2, 96, False), (4, 64, 256, True)])
def test_norm_of_summed_parts_matches_torch(S, T, N, residual, dtype):
    gen = torch.Generator().manual_seed(S * 100 + T)
    parts = torch.randn(S, T, N, generator=gen).to(DEVICE)
    w = (1 + 0.2 * torch.randn(N, generator=gen)).to(DEVICE, dtype)
    res = torch.randn(T, N, generator=gen).to(DEVICE, dtype) if residual else None
    h, r = rms_norm_parts(parts, w, 1e-6, res, dtype)
    x = parts[0].clone()
    for s in range(1, S):                                    # the kernel's order: slice 0, 1, ...
        x += parts[s]
    want_h, want_r = rms_norm_torch(x.to(dtype), w, 1e-6, res)
    want_r = x.to(dtype) if res is None else want_r
    assert h.dtype == r.dtype == dtype and h.shape == r.shape == (T, N)
    assert torch.equal(r, want_r)                            # the residual stream: elementwise, exact
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert torch.allclose(h.float(), want_h.float(), rtol=tol, atol=tol)


def test_norm_of_parts_refuses_bad_input():
    parts = torch.randn(2, 3, 8, device=DEVICE)
    w = torch.ones(8, device=DEVICE)
    with pytest.raises(AssertionError):
        rms_norm_parts(parts.half(), w.half(), 1e-6, None, torch.float16)        # partials must be float32
    with pytest.raises(AssertionError):
        rms_norm_parts(parts, torch.ones(9, device=DEVICE), 1e-6, None, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K,D,T", [(64, 48, 5), (128, 40, 1), (256, 96, 33), (2048, 2048, 64)])
def test_partials_add_up_to_the_projection(K, D, T, dtype):
    """float32 partials over K's slices (on a GPU from half inputs through bmm's out_dtype) sum to the projection."""
    wo = Linear(K, D).to(DEVICE)
    torch.nn.init.normal_(wo.weight, std=K ** -0.5)
    wo.to(dtype)
    a = torch.randn(T, K, device=DEVICE).to(dtype)
    parts = o_splitk.partials(wo, a)
    assert parts.shape == (o_splitk.SPLITS, T, D) and parts.dtype == torch.float32
    want = a.double() @ wo.weight.double().T
    assert torch.allclose(parts.sum(0).double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen2-moe-tiny", "deepseek-v2-lite-tiny", "mixtral-tiny",
                                  "qwen3-moe-tiny"])
def test_model_split_equals_unsplit(card, monkeypatch):
    """End to end (GQA with a full q/k norm, a gated shared expert, MLA with a dense first layer, GQA without q/k
    norm, per-head q/k norm): the same greedy tokens and, in fp32, logits within rounding; "on" splits every layer's
    o projection at every step (prefill too), "off" none."""
    runs = []
    real = o_splitk.norm
    monkeypatch.setattr(o_splitk, "norm", lambda *a: runs.append(a[1].shape) or real(*a))
    s = RunSettings(device=DEVICE, ops="triton").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=4)
    prompts = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    monkeypatch.setattr(o_splitk, "MODE", "off")
    apart_tokens, apart_logits = greedy_and_logits(model, prompts, 3)
    assert runs == []
    monkeypatch.setattr(o_splitk, "MODE", "on")
    split_tokens, split_logits = greedy_and_logits(model, prompts, 3)
    assert len(runs) >= cfg.n_layers * 2 and all(r[0] == o_splitk.SPLITS for r in runs)
    err = ((split_logits - apart_logits).abs().max() / apart_logits.abs().max()).item()
    assert err <= 1e-5, err
    assert torch.equal(split_tokens, apart_tokens)


def test_fits_only_where_it_can_run(monkeypatch):
    s = RunSettings(device=DEVICE, ops="triton").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    block = model.layers[0]
    x = torch.zeros(16, 1, cfg.hidden_size, device=DEVICE)
    monkeypatch.setattr(o_splitk, "MODE", "on")
    assert o_splitk.fits(block, x, x)
    assert not o_splitk.fits(block, x, None)                                       # no residual stream yet
    handle = block.attn.wo.register_forward_hook(lambda *a: None)                   # a TP all-reduce, calibration
    assert not o_splitk.fits(block, x, x)
    handle.remove()
    monkeypatch.setattr(o_splitk, "SPLITS", 7)                                      # K not a multiple
    assert not o_splitk.fits(block, x, x)
    monkeypatch.setattr(o_splitk, "SPLITS", 2)
    w = block.attn.wo.weight
    block.attn.wo.weight = torch.nn.Parameter(w.detach().t().contiguous().t())      # a strided weight: no views
    assert not o_splitk.fits(block, x, x)
    block.attn.wo.weight = w
    assert o_splitk.fits(block, x, x)
    if DEVICE == "cuda":                                                            # torch < 2.8: no bmm out_dtype
        monkeypatch.setattr(o_splitk, "_BMM_OUT_DTYPE", False)
        assert not o_splitk.fits(block, x, x)
        monkeypatch.setattr(o_splitk, "_BMM_OUT_DTYPE", True)
    monkeypatch.setattr(o_splitk, "MODE", "auto")
    assert o_splitk.fits(block, x, x) == (DEVICE == "cuda")                         # auto: a CUDA device, 16-64
    assert not o_splitk.fits(block, x[:1], x[:1])
    monkeypatch.setattr(o_splitk, "AUTO_MAX_D", cfg.hidden_size - 1)                # auto: not for wider outputs
    assert not o_splitk.fits(block, x, x)
    monkeypatch.setattr(o_splitk, "AUTO_MAX_D", 2048)
    monkeypatch.setattr(o_splitk, "MODE", "off")
    assert not o_splitk.fits(block, x, x)
    assert not o_splitk.fits(block, x, x.half())                                    # a residual of another dtype
    s.ops = "torch"
    monkeypatch.setattr(o_splitk, "MODE", "on")
    assert not o_splitk.fits(block, x, x)
    monkeypatch.setattr(o_splitk, "MODE", "yes")
    with pytest.raises(ValueError, match="MODE"):
        o_splitk.fits(block, x, x)


def test_fits_refuses_a_quantized_o_projection(monkeypatch):
    """A quantized model's o weight is a packed module, not a tensor: the split leaves it to its own kernels."""
    from minimoe.quant import quantize_
    s = RunSettings(device=DEVICE, ops="triton").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=1)
    quantize_(model, s, "int8")
    x = torch.zeros(16, 1, cfg.hidden_size, device=DEVICE)
    monkeypatch.setattr(o_splitk, "MODE", "on")
    assert not o_splitk.fits(model.layers[0], x, x)
