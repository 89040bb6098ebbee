"""Guards the expert paths on the CPU: `loop` (the oracle) against a float64 einsum reference, and `grouped` against `loop` on awkward routings (one token, idle experts, one busy expert, E=60, expert-parallel offsets); the fused Triton path has its own file."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from minimoe.experts import EXPERT_PATHS, Experts
from minimoe.generate import Generator
from minimoe.loader import build_model

D, I = 48, 40
TOL = {"loop_vs_fp64": 1e-5, "grouped_vs_loop": 1e-5}        # float32


def run_path(path, x, w13, w2, ids, weights, expert_offset=0):
    """An expert path on an Experts module holding these stacked tensors."""
    return EXPERT_PATHS[path](x, Experts.from_tensors(w13, w2, expert_offset), ids, weights)


def einsum_reference(x, w13, w2, ids, weights, expert_offset=0):
    """Every token through every local expert in float64, then keep the routed slots (foreign ids: 0)."""
    x, w13, w2, weights = x.double(), w13.double(), w2.double(), weights.double()
    E, width = w13.shape[0], w2.shape[2]
    h = torch.einsum("td,eid->tei", x, w13)                                    # [T, E, 2I]
    y = torch.einsum("tei,edi->ted", F.silu(h[..., :width]) * h[..., width:], w2)   # [T, E, D]
    local = ids - expert_offset                                                # [T, K]
    mine = (local >= 0) & (local < E)
    picked = y.gather(1, local.clamp(0, E - 1)[..., None].expand(-1, -1, y.shape[-1]))  # [T, K, D]
    return (picked * (weights * mine)[..., None]).sum(1)                       # [T, D]


def make_inputs(T, E, K, seed, ids=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen)
    w13 = torch.randn(E, 2 * I, D, generator=gen) * D ** -0.5                  # [E, 2I, D]
    w2 = torch.randn(E, D, I, generator=gen) * I ** -0.5                       # [E, D, I]
    if ids is None:                                                            # K distinct experts per token
        ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
    weights = torch.rand(ids.shape, generator=gen)
    return x, w13, w2, ids, weights


def _skewed_ids(T, K):
    """Only experts 1 and 4 ever chosen: the rest receive no tokens."""
    ids = torch.tensor([[1, 4]] * T)[:, :K]
    ids[::3] = ids[::3].flip(-1)
    return ids


CASES = {
    # name: (T, E, K, explicit ids or None)
    "random": (33, 8, 2, None),
    "one_token": (1, 8, 3, None),
    "one_token_one_expert": (1, 1, 1, None),
    "idle_experts": (20, 8, 2, _skewed_ids(20, 2)),
    "all_to_one_expert": (17, 8, 3, torch.full((17, 3), 5)),        # every slot of every token on expert 5
    "e60_odd_counts": (37, 60, 4, None),
    "more_slots_than_tokens": (3, 64, 8, None),
}


@pytest.mark.parametrize("case", CASES)
def test_loop_matches_float64_einsum(case):
    T, E, K, ids = CASES[case]
    x, w13, w2, ids, w = make_inputs(T, E, K, seed=len(case), ids=ids)
    out = run_path("loop", x, w13, w2, ids, w)
    assert out.shape == (T, D) and out.dtype == torch.float32
    assert rel_err(out, einsum_reference(x, w13, w2, ids, w)) <= TOL["loop_vs_fp64"]


@pytest.mark.parametrize("case", CASES)
def test_grouped_matches_loop(case):
    T, E, K, ids = CASES[case]
    x, w13, w2, ids, w = make_inputs(T, E, K, seed=len(case) + 1, ids=ids)
    want = run_path("loop", x, w13, w2, ids, w)
    assert rel_err(run_path("grouped", x, w13, w2, ids, w), want) <= TOL["grouped_vs_loop"]


@pytest.mark.parametrize("path", ["loop", "grouped"])
@pytest.mark.parametrize("offset", [0, 4, 8])
def test_expert_offset_foreign_ids_contribute_zero(path, offset):
    """A rank holding global experts [offset, offset+4) of 12: ids outside contribute nothing."""
    T, E_local, E_global, K = 29, 4, 12, 3
    gen = torch.Generator().manual_seed(offset)
    ids = torch.stack([torch.randperm(E_global, generator=gen)[:K] for _ in range(T)])
    x, w13, w2, ids, w = make_inputs(T, E_local, K, seed=offset + 11, ids=ids)
    out = run_path(path, x, w13, w2, ids, w, expert_offset=offset)
    assert rel_err(out, einsum_reference(x, w13, w2, ids, w, expert_offset=offset)) <= TOL["loop_vs_fp64"]
    mine = ((ids >= offset) & (ids < offset + E_local)).any(-1)
    assert not mine.all() and mine.any()
    assert torch.equal(out[~mine], torch.zeros_like(out[~mine]))           # exactly zero, not merely small


@pytest.mark.parametrize("path", ["loop", "grouped"])
def test_zero_weight_slots_contribute_zero(path):
    x, w13, w2, ids, w = make_inputs(16, 8, 2, seed=3)
    w[:, 1] = 0.0
    out = run_path(path, x, w13, w2, ids, w)
    assert rel_err(out, run_path(path, x, w13, w2, ids[:, :1], w[:, :1])) <= 1e-6


def test_grouped_equals_loop_inside_a_model():
    """Flipping only RunSettings.experts leaves a whole model's logits unchanged."""
    net, cfg, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, seed=4)
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    logits = {}
    for path in ("loop", "grouped"):
        net.settings.experts = path
        gen = Generator(net, 2, 16)
        with torch.inference_mode():
            logits[path] = net(ids, gen.cache.step(9, 0), gen.cache)
    assert rel_err(logits["grouped"], logits["loop"]) <= TOL["grouped_vs_loop"]


def test_grouped_path_refuses_rows_that_are_not_whole_16_byte_units():
    """torch._grouped_mm needs 16-byte rows: a width pruned from one that is not a multiple of 8 (30 -> 26 at 12.5%)
    made --experts grouped raise mid-run; it is now refused up front, by width and dtype."""
    import dataclasses
    from minimoe.experts import grouped_problem
    from minimoe.loader import read_config
    from minimoe.runtime import UsageError, check_settings
    from minimoe.settings import RunSettings
    assert grouped_problem([26], 64, torch.float32) is not None and "expert width 26 is 104 bytes" in \
        grouped_problem([26], 64, torch.float32)
    assert grouped_problem([28], 64, torch.float32) is None                      # 112 bytes
    assert grouped_problem([28], 64, torch.bfloat16) is not None                # 56 bytes
    assert "hidden size 30" in grouped_problem([32], 30, torch.float32)
    cfg = dataclasses.replace(read_config("olmoe-tiny")[0], moe_intermediate_size=26)
    with pytest.raises(UsageError, match="--experts grouped runs torch._grouped_mm"):
        check_settings(RunSettings(device="cpu", dtype="fp32", experts="grouped").resolve(), cfg)
    check_settings(RunSettings(device="cpu", dtype="fp32", experts="loop").resolve(), cfg)       # loop runs it
    wide = dataclasses.replace(cfg, moe_intermediate_size=40)                     # 80 bytes in bf16, 40 a TP2 shard
    with pytest.raises(UsageError, match="expert width 20 is 40 bytes"):
        check_settings(RunSettings(device="cpu", dtype="fp16", experts="grouped", tp=2).resolve(), wide)
