"""The L2 warm-up of a MoE layer's first expert bytes (expert_prefetch.py, kernels/l2_prefetch.py): which bytes, and
that asking for them changes no computed value."""
import pytest
import torch

from minimoe import expert_prefetch
from minimoe.kernels.l2_prefetch import plan_chunks
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def test_plan_chunks_takes_whole_chunks_in_order_within_the_budget():
    assert plan_chunks([2048, 100], 3000, chunk=1024) == [2, 0]
    assert plan_chunks([2048, 4096], 5000, chunk=1024) == [2, 2]
    assert plan_chunks([100, 4096], 5000, chunk=1024) == [0, 4]      # a segment shorter than a chunk: skipped
    assert plan_chunks([4096], 0, chunk=1024) == [0]
    assert plan_chunks([4096], 10**9, chunk=1024) == [4]             # never past a tensor's end
    for sizes, budget in [([5000, 7000], 9000), ([16384] * 2, 20000), ([1 << 20, 1 << 20], 3 << 19)]:
        counts = plan_chunks(sizes, budget, chunk=1024)
        assert sum(counts) * 1024 <= budget and all(c * 1024 <= s for c, s in zip(counts, sizes))


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v2-lite-tiny"])
def test_nothing_is_asked_for_on_a_cpu(card, monkeypatch):
    """The instruction is sm90+ PTX: on a CPU (and in the interpreter) `launch` never runs the kernel."""
    monkeypatch.setattr(expert_prefetch, "PREFETCH_MB", 32)
    monkeypatch.setattr(expert_prefetch, "MIN_TOKENS", 1)
    s = RunSettings(experts="fused", device="cpu").resolve()
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device="cpu", settings=s, seed=0)
    moe = next(b.ffn for b in model.layers if b.ffn_region is None)
    x = torch.randn(64, cfg.hidden_size)
    assert expert_prefetch.segments(moe, x) == []
    assert expert_prefetch.launch(moe, x) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("card", ["olmoe-tiny", "qwen2-moe-tiny", "deepseek-v2-lite-tiny"])
def test_prefetch_changes_no_logit(card, monkeypatch):
    """Graphed and eager, with PDL on where the GPU has it: the logits with the warm-up equal those without, bit for
    bit, and the warm-up did run (the shared expert's w13 first where --fuse-shared puts it in GEMM1)."""
    from tests.test_gpu import _tokens
    pdl = "on" if torch.cuda.get_device_capability()[0] >= 9 else "off"
    s = RunSettings(experts="fused", attn="triton", ops="triton", pdl=pdl)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.bfloat16, device="cuda", settings=s, seed=3)
    prompts = torch.randint(0, cfg.vocab_size, (24, 5), device="cuda")
    monkeypatch.setattr(expert_prefetch, "MIN_TOKENS", 8)
    off = _tokens(model, prompts, 6, graphs=True)
    asked = []
    real = expert_prefetch.launch
    monkeypatch.setattr(expert_prefetch, "launch", lambda m, x: asked.append((expert_prefetch.segments(m, x.view(
        -1, x.shape[-1])), real(m, x))) or asked[-1][1])
    monkeypatch.setattr(expert_prefetch, "PREFETCH_MB", 1)
    on_graphed = _tokens(model, prompts, 6, graphs=True)
    on_eager = _tokens(model, prompts, 6, graphs=False)
    assert torch.equal(off, on_graphed) and torch.equal(off, on_eager)
    ran = [(segs, n) for segs, n in asked if n > 0]
    assert ran, "the warm-up never launched"
    first = next(b.ffn for b in model.layers if b.ffn_region is None)    # the first MoE layer's, in order
    segs = ran[0][0]
    assert segs[-1] is first.experts.w13
    assert len(segs) == (1 if first.shared is None else 2)
    if first.shared is not None:
        assert segs[0] is first.shared.w13.weight
