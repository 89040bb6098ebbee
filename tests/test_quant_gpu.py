"""GPU-only guards for quantized models (skipped without CUDA): the graphed decode step equals the eager one, and
fp8 dense layers on torch._scaled_mm equal their PyTorch reference."""
import pytest
import torch

from minimoe import quant
from minimoe.generate import Generator
from minimoe.graphs import enable_graphs
from minimoe.loader import build_model
from minimoe.qweights import QuantWeight
from minimoe.settings import RunSettings

pytestmark = pytest.mark.gpu
try:
    import bitsandbytes  # noqa: F401
    HAVE_BNB = True
except ImportError:
    HAVE_BNB = False


def _tokens(model, prompts, steps, graphs):
    gen = Generator(model, prompts.shape[0], prompts.shape[1] + steps + 1)
    if graphs:
        enable_graphs(gen, prefill_lengths=[prompts.shape[1]])
    return gen.generate(prompts, steps)


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v3-tiny"])
@pytest.mark.parametrize("fmt", ["int4", "fp8", "nf4"])
def test_quantized_graphed_decode_equals_eager(card, fmt):
    if fmt == "nf4" and not HAVE_BNB:
        pytest.skip("bitsandbytes not importable")
    s = RunSettings(experts="fused", device="cuda", quant=fmt)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.bfloat16, device="cuda", settings=s, seed=1)
    assert cfg.extra["weight_format"]["quant"] == fmt
    prompts = torch.randint(0, cfg.vocab_size, (3, 9), device="cuda")
    assert torch.equal(_tokens(model, prompts, 12, graphs=True), _tokens(model, prompts, 12, graphs=False))


def test_fp8_scaled_mm_equals_its_reference():
    w = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 0.02
    qw = quant.FORMATS["fp8"].stack(w, cls=QuantWeight)
    qw.use_kernels = True
    x = torch.randn(40, 512, device="cuda", dtype=torch.bfloat16)
    got, want = qw.linear(x).float(), qw.reference_linear(x).float()
    assert ((got - want).norm() / want.norm()).item() < 1e-2
