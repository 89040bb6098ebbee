"""GPU-only: every tuned bf16 table entry that reads its weights through TMA (`b_tma`), launched at its table's real
shape (E, I, D, K) and its bucket's token count, against a loop over experts in float32. The CPU tests check the TMA
path on the interpreter's small tiles; these check the tiles the H200 runs (BLOCK_M 16 decode tiles included)."""
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
