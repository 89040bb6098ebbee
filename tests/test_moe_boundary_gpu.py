"""GPU-only guard for the decode MoE's GEMM1 -> GEMM2 boundary knob (kernels/fused_moe_small.GEMM2_AFTER_GEMM1_END:
GEMM2 launched with PDL, released by each GEMM1 program at its end): the default's bits, eager and replayed in a CUDA
graph behind a router-like predecessor, at the real shapes of the models it is measured on."""
import pytest
import torch

from minimoe.kernels import fused_moe_small as fms

pytestmark = pytest.mark.gpu

SHAPES = {"qwen3": (128, 8, 768, 2048, 0), "olmoe": (64, 8, 1024, 2048, 0),   # E, K, I, D, shared expert width
          "dsv2lite": (64, 6, 1408, 2048, 2816)}


def _layer(name, T, seed):
    E, K, I, D, I_S = SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    dev = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(T, D, generator=gen, device="cuda").to(torch.bfloat16)
    w13 = (torch.randn(E, 2 * I, D, generator=gen, device="cuda") * D ** -0.5).to(**dev)
    w2 = (torch.randn(E, D, I, generator=gen, device="cuda") * I ** -0.5).to(**dev)
    scores = torch.rand(T, E, generator=gen, device="cuda")
    shared = None
    if I_S:
        shared = fms.SharedExpert((torch.randn(2 * I_S, D, generator=gen, device="cuda") * D ** -0.5).to(**dev),
                                  (torch.randn(D, I_S, generator=gen, device="cuda") * I_S ** -0.5).to(**dev))
    return x, w13, w2, scores, K, shared


def _run(x, w13, w2, scores, K, shared):
    weights, ids = scores.topk(K, dim=-1)            # a predecessor kernel writes the ids, as the router does
    return fms.fused_moe_small(x, w13, w2, ids, weights, 0, None, pdl=True, shared=shared)


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("T", [1, 2])
def test_gemm2_after_gemm1_end_same_bits(monkeypatch, name, T):
    layer = _layer(name, T, seed=T + 17 * len(name))
    base = _run(*layer)
    monkeypatch.setattr(fms, "GEMM2_AFTER_GEMM1_END", True)
    assert torch.equal(_run(*layer), base)
    # replayed in a graph, with fresh routing scores each replay (the ids a replay reads are its own step's)
    x, w13, w2, scores, K, shared = layer
    static_scores = scores.clone()
    _run(x, w13, w2, static_scores, K, shared)                               # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _run(x, w13, w2, static_scores, K, shared)
    for seed in range(3):
        fresh = torch.rand(scores.shape, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda")
        static_scores.copy_(fresh)
        graph.replay()
        monkeypatch.setattr(fms, "GEMM2_AFTER_GEMM1_END", False)
        want = _run(x, w13, w2, fresh, K, shared)
        monkeypatch.setattr(fms, "GEMM2_AFTER_GEMM1_END", True)
        torch.cuda.synchronize()
        assert torch.equal(out, want), (name, T, seed)
