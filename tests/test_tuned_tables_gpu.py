"""GPU-only: every tuned bf16 table entry that reads its weights through TMA (`b_tma`), launched at its table's real
shape (E, I, D, K) and its bucket's token count, against a loop over experts in float32. The CPU tests check the TMA
path on the interpreter's small tiles; these check the tiles the H200 runs (BLOCK_M 16 decode tiles included). Last,
the GEMM1 / GEMM2 overlap (`fused_moe.OVERLAP_GEMMS`) at real shapes with its early PDL launch, eager and graphed,
against the stream-ordered call, over routings that change from call to call."""
import json
import math

import pytest
import torch

from minimoe.kernels import moe_configs
from minimoe.kernels.fused_moe import fused_moe

pytestmark = pytest.mark.gpu


def _entries():
    out = []
    for path in sorted(moe_configs.CONFIG_DIR.glob("E=*,device_name=NVIDIA_H200,dtype=bfloat16.json")):
        E, I, D, K = (int(part.split("=")[1]) for part in path.name.split(",")[:4])
        for bucket, cfg in json.loads(path.read_text())["configs"].items():
            if cfg.get("b_tma") or cfg.get("down", {}).get("b_tma"):
                out.append(pytest.param(E, I, D, K, int(bucket), cfg, id=f"{path.name.split(',device')[0]}-T{bucket}"))
    return out


def _reference(x, w13, w2, ids, weights):
    I = w13.shape[1] // 2
    out = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
    xf = x.float()
    for e in ids.unique().tolist():
        tok, slot = torch.where(ids == e)
        g, u = w13[e, :I].float(), w13[e, I:].float()
        h = (torch.nn.functional.silu(xf[tok] @ g.T) * (xf[tok] @ u.T)).to(x.dtype).float()   # the kernel's bf16 h
        out.index_add_(0, tok, weights[tok, slot, None] * (h @ w2[e].float().T))
    return out


@pytest.mark.parametrize("E,I,D,K,T,cfg", _entries())
def test_tma_table_entry_matches_the_loop(E, I, D, K, T, cfg):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA descriptors need an sm90+ GPU")
    g = torch.Generator(device="cuda").manual_seed(T)
    w13 = torch.randn(E, 2 * I, D, device="cuda", dtype=torch.bfloat16, generator=g) / math.sqrt(D)
    w2 = torch.randn(E, D, I, device="cuda", dtype=torch.bfloat16, generator=g) / math.sqrt(I)
    x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=g)
    weights, ids = torch.randn(T, E, device="cuda", generator=g).softmax(-1).topk(K, dim=-1)
    out = fused_moe(x, w13, w2, ids.to(torch.int32), weights, config=cfg).float()
    ref = _reference(x, w13, w2, ids, weights)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-2, err


@pytest.mark.parametrize("E,I,D,K,T", [(64, 1024, 2048, 8, 64), (64, 1024, 2048, 8, 16), (128, 768, 2048, 8, 64)])
def test_overlap_at_real_shapes_equals_stream_order(E, I, D, K, T, monkeypatch):
    """OLMoE's and Qwen3-30B-A3B's decode shapes with their tuned tiles: GEMM2 launched early (PDL) and waiting on
    GEMM1's flags gives bit for bit the stream-ordered output, call after call with new routings (so other M-blocks are
    live and the counters must have been reset), and as a replayed CUDA graph fed new inputs in place."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs an sm90+ GPU")
    from minimoe.kernels import fused_moe as fm
    g = torch.Generator(device="cuda").manual_seed(E + T)
    w13 = torch.randn(E, 2 * I, D, device="cuda", dtype=torch.bfloat16, generator=g) / math.sqrt(D)
    w2 = torch.randn(E, D, I, device="cuda", dtype=torch.bfloat16, generator=g) / math.sqrt(I)

    def routing():
        x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=g)
        w, ids = torch.randn(T, E, device="cuda", generator=g).softmax(-1).topk(K, dim=-1)
        return x, ids.to(torch.int32), w

    def call(mode, x, ids, w):
        monkeypatch.setattr(fm, "OVERLAP_GEMMS", mode)
        return fm.fused_moe(x, w13, w2, ids, w, pdl=True)

    assert fm.overlap_gemms(T, K, E, I, moe_configs.get_config(E, I, D, K, T, torch.bfloat16)["BLOCK_N"], True)
    for _ in range(12):
        x, ids, w = routing()
        assert torch.equal(call("on", x, ids, w), call("off", x, ids, w))
    sx, sids, sw = routing()
    call("on", sx, sids, sw)                                     # warm-up (compiles, the device's flag buffer)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call("on", sx, sids, sw)
    for _ in range(6):
        x, ids, w = routing()
        sx.copy_(x), sids.copy_(ids), sw.copy_(w)
        graph.replay()
        assert torch.equal(out, call("off", x, ids, w))
    torch.cuda.synchronize()
    assert not fm._flags[torch.device("cuda", torch.cuda.current_device())].any()
