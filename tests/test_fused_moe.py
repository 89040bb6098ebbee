"""Guards the Triton fused MoE (alignment; small GEMV, legacy small_dot and aligned variants; EP
offsets; launch configs) against a float64 loop."""

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the kernels are decorated: @triton.jit reads it at import time.
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from minimoe.kernels import fused_moe_small, moe_align, moe_configs, small_configs  # noqa: E402
from minimoe.kernels.fused_moe import fused_moe, plan  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
D, I = 40, 48  # neither is a multiple of the 32-wide test tiles: masks and N wrap-around run


def reference_moe(x, w13, w2, topk_ids, topk_weights, expert_offset=0):
    """The oracle: a float64 loop over local experts; foreign ids are simply never visited."""
    x, w13, w2 = x.double().cpu(), w13.double().cpu(), w2.double().cpu()
    topk_ids, topk_weights = topk_ids.cpu(), topk_weights.double().cpu()
    E, width = w13.shape[0], w13.shape[1] // 2
    out = torch.zeros_like(x)                                                # [T, D]
    for e in range(E):
        tok, slot = torch.where(topk_ids == e + expert_offset)
        if tok.numel() == 0:
            continue
        gate, up = x[tok] @ w13[e, :width].T, x[tok] @ w13[e, width:].T       # [n, I]
        y = (torch.nn.functional.silu(gate) * up) @ w2[e].T                  # [n, D]
        out.index_add_(0, tok, topk_weights[tok, slot, None] * y)
    return out


def make_routing(T, K, n_global, routing, gen):
    if routing == "random":      # K distinct experts per token, as a router gives
        ids = torch.stack([torch.randperm(n_global, generator=gen)[:K] for _ in range(T)])
    elif routing == "one_expert":  # every slot of every token on one expert
        ids = torch.full((T, K), 3)
    else:
        raise ValueError(routing)
    return ids, torch.rand(T, K, generator=gen)


def make_layer(T, E, dtype, gen, d=D, i=I):
    x = torch.randn(T, d, generator=gen)
    w13 = torch.randn(E, 2 * i, d, generator=gen) / d ** 0.5
    w2 = torch.randn(E, d, i, generator=gen) / i ** 0.5
    return [t.to(dtype=dtype, device=DEVICE) for t in (x, w13, w2)]


BIG_TILES = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4,
             "num_stages": 2, "down": {"BLOCK_N": 16, "BLOCK_K": 32}}
CASES = [  # variant, dtype, E, K, T, routing, expert_offset, n_global, extra config
    ("aligned", torch.float32, 8, 2, 64, "random", 0, 8, None),
    ("aligned", torch.float16, 6, 3, 5, "random", 0, 6, None),
    ("aligned", torch.float32, 12, 2, 64, "one_expert", 0, 12, None),
    ("aligned", torch.float16, 12, 3, 64, "random", 0, 12, None),
    ("aligned", torch.float16, 8, 2, 64, "random", 4, 16, None),     # half the ids foreign
    ("aligned", torch.float32, 6, 2, 64, "random", 0, 6, BIG_TILES),  # N wrap, grouping, "down"
    ("small", torch.float32, 12, 3, 1, "random", 0, 12, None),       # plan's own choice too
    ("small", torch.float16, 8, 2, 5, "random", 3, 14, None),
    ("small", torch.float32, 8, 1, 5, "one_expert", 0, 8, None),
    ("small", torch.float32, 64, 3, 2, "one_expert", 0, 64, None),   # every slot one expert
    ("small_dot", torch.float16, 8, 2, 5, "random", 3, 14, None),    # the legacy decode kernels
    ("small_dot", torch.float32, 12, 3, 1, "random", 0, 12, None),
    ("aligned", torch.float32, 64, 2, 1, "random", 0, 64, None),     # "variant" overrides plan
]
if not INTERPRET:  # the interpreter has no bfloat16; on a GPU the real kernels cover it too
    CASES += [("aligned", torch.bfloat16, 8, 2, 64, "random", 4, 16, None),
              ("small", torch.bfloat16, 12, 3, 1, "random", 0, 12, None)]
needs_cuda = pytest.mark.skipif(INTERPRET, reason="CUDA graphs need a GPU")


@pytest.mark.parametrize("variant,dtype,E,K,T,routing,offset,n_global,extra", CASES)
def test_fused_moe_matches_reference(variant, dtype, E, K, T, routing, offset, n_global, extra):
    seed = zlib.crc32(repr((variant, E, K, T, routing, offset)).encode())
    gen = torch.Generator().manual_seed(seed)
    x, w13, w2 = make_layer(T, E, dtype, gen)
    ids, weights = make_routing(T, K, n_global, routing, gen)
    ids = ids.to(device=DEVICE, dtype=torch.int32 if K > 1 else torch.int64)
    weights = weights.to(DEVICE)
    config = dict(extra or moe_configs.interpreter_config())
    if plan(T, K, E) != variant:  # force the other path only where plan would not take it
        config["variant"] = variant
    assert plan(T, K, E, config) == variant
    out = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config)
    ref = reference_moe(x, w13, w2, ids, weights, offset)
    assert out.shape == (T, D) and out.dtype == dtype
    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e}"


TMA_CASES = [  # dtype, E, K, T, routing, expert_offset, n_global, config keys
    (torch.float32, 8, 2, 64, "random", 0, 8, {"b_tma": True}),
    (torch.float16, 6, 3, 5, "random", 0, 6, {"b_tma": True}),
    (torch.float32, 12, 2, 64, "one_expert", 0, 12, {"b_tma": True}),                     # 11 empty experts
    (torch.float16, 8, 2, 64, "random", 4, 16, {"b_tma": True}),                          # half the ids foreign
    (torch.float32, 60, 4, 33, "random", 0, 60, {"b_tma": True}),                         # 60 experts, ragged T
    (torch.float32, 64, 2, 1, "random", 0, 64, {"b_tma": True, "variant": "aligned"}),    # one token
    (torch.float32, 6, 2, 64, "random", 0, 6, dict(BIG_TILES, b_tma=True)),              # N wrap into up rows
    (torch.float32, 6, 2, 64, "random", 0, 6, dict(BIG_TILES, down=dict(BIG_TILES["down"], b_tma=True))),
]


@pytest.mark.parametrize("dtype,E,K,T,routing,offset,n_global,keys", TMA_CASES)
def test_weight_tma_matches_reference_and_pointer_loads(dtype, E, K, T, routing, offset, n_global, keys, monkeypatch):
    """`b_tma`: the aligned GEMMs reading their weight tiles through TMA descriptors give the oracle's answer and the
    pointer loads' answer, on D = 40 and I = 48 (neither a multiple of the tiles: the descriptors' zero fill past D
    and I, and the last N tile reading into the next rows, are both exercised)."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((E, K, T, routing, offset, sorted(keys))).encode()))
    x, w13, w2 = make_layer(T, E, dtype, gen)
    ids, weights = make_routing(T, K, n_global, routing, gen)
    ids, weights = ids.to(DEVICE), weights.to(DEVICE)
    base = {k: v for k, v in keys.items() if k not in ("b_tma", "down")} or moe_configs.interpreter_config()
    base = dict(moe_configs.interpreter_config(), **base)
    if "down" in keys:
        base["down"] = {k: v for k, v in keys["down"].items() if k != "b_tma"}
    tma = dict(base, **keys)
    assert plan(T, K, E, tma) == "aligned"
    assert moe_configs.down_config(tma).get("b_tma") is True
    from minimoe.kernels import fused_moe as fm
    made = []                                   # the descriptors built: the TMA path really ran, no quiet fallback
    real = fm._weight_desc
    monkeypatch.setattr(fm, "_weight_desc", lambda w, bn, bk: made.append(tuple(w.shape)) or real(w, bn, bk))
    out = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=tma)
    assert made == ([w13.shape] if keys.get("b_tma") else []) + [w2.shape], made
    monkeypatch.setattr(fm, "_weight_desc", real)
    ptr = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=base)
    ref = reference_moe(x, w13, w2, ids, weights, offset)
    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e}"
    assert torch.allclose(out.float(), ptr.float(), rtol=TOL[dtype], atol=TOL[dtype])


OVERLAP_CASES = [  # dtype, E, K, T, routing, expert_offset, n_global, config keys
    (torch.float32, 8, 2, 64, "random", 0, 8, {}),
    (torch.float16, 12, 2, 64, "one_expert", 0, 12, {}),                                   # 11 empty experts
    (torch.float32, 8, 2, 64, "random", 4, 16, {}),                                        # half the ids foreign
    (torch.float32, 60, 4, 33, "random", 0, 60, {}),                                       # 60 experts, ragged T
    (torch.float32, 64, 2, 1, "random", 0, 64, {"variant": "aligned"}),                    # one token
    (torch.float32, 6, 2, 64, "random", 0, 6, BIG_TILES),                                  # GEMM2's own N tile
    (torch.float32, 8, 3, 20, "random", 0, 8, {"b_tma": True}),
]


@pytest.mark.parametrize("dtype,E,K,T,routing,offset,n_global,keys", OVERLAP_CASES)
def test_overlap_gemms_flags_match_stream_order(dtype, E, K, T, routing, offset, n_global, keys, monkeypatch):
    """`OVERLAP_GEMMS`: GEMM2 programs waiting on GEMM1's per-M-block arrival flags give exactly the stream-ordered
    call's output (same tiles, same sums), the oracle's answer, and leave the device's flag buffer zeroed after every
    call (the last reader of each M-block resets it), across calls. On an sm90 GPU also launched early with PDL."""
    from minimoe.kernels import fused_moe as fm
    gen = torch.Generator().manual_seed(zlib.crc32(repr(("overlap", E, K, T, routing, offset, sorted(keys))).encode()))
    x, w13, w2 = make_layer(T, E, dtype, gen)
    ids, weights = make_routing(T, K, n_global, routing, gen)
    ids, weights = ids.to(DEVICE), weights.to(DEVICE)
    cfg = dict(moe_configs.interpreter_config(), **keys)
    assert plan(T, K, E, cfg) == "aligned"
    base = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=cfg)
    buf = torch.zeros(2, 128, dtype=torch.int32, device=DEVICE)
    monkeypatch.setattr(fm, "_flags", {x.device: buf})
    monkeypatch.setattr(fm, "OVERLAP_GEMMS", "on")
    used = []
    real = fm._flags_for
    monkeypatch.setattr(fm, "_flags_for", lambda d, n: used.append(n) or real(d, n))
    runs = [{}] + ([{"pdl": True}] if not INTERPRET and torch.cuda.get_device_capability()[0] >= 9 else [])
    for kw in runs * 2:
        out = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=cfg, **kw)
        assert torch.equal(out, base), kw
        assert not buf.any(), buf
    assert len(used) == 2 * len(runs) and 0 < used[0] <= buf.shape[1]          # the flags path really ran
    ref = reference_moe(x, w13, w2, ids, weights, offset)
    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e}"


def test_overlap_gemms_more_blocks_than_the_buffer(monkeypatch):
    """A call with more M-blocks than the device's flag buffer gets fresh zeroed counters of its own (the buffer is
    left alone), with the same output."""
    from minimoe.kernels import fused_moe as fm
    gen = torch.Generator().manual_seed(11)
    x, w13, w2 = make_layer(64, 8, torch.float32, gen)
    ids, weights = make_routing(64, 2, 8, "random", gen)
    ids, weights = ids.to(DEVICE), weights.to(DEVICE)
    cfg = moe_configs.interpreter_config()
    base = fused_moe(x, w13, w2, ids, weights, config=cfg)
    buf = torch.zeros(2, 2, dtype=torch.int32, device=DEVICE)
    monkeypatch.setattr(fm, "_flags", {x.device: buf})
    monkeypatch.setattr(fm, "OVERLAP_GEMMS", "on")
    got = []
    real = fm._flags_for
    monkeypatch.setattr(fm, "_flags_for", lambda d, n: got.append(real(d, n)) or got[-1])
    assert torch.equal(fused_moe(x, w13, w2, ids, weights, config=cfg), base)
    assert got[0] is not buf and got[0].shape[1] > buf.shape[1] and not got[0].any() and not buf.any()


def test_overlap_gemms_auto_rule(monkeypatch):
    """"auto" overlaps only with PDL, at 16-64 tokens, where the live M-blocks outnumber GEMM1's N tiles an M-block 4:1
    (OLMoE, Qwen3-30B-A3B), not Mixtral's 8 experts of 112 N tiles; "on" / "off" force it; anything else is refused."""
    from minimoe.kernels import fused_moe as fm
    olmoe, qwen3, mixtral = (64, 8, 1024), (128, 8, 768), (8, 2, 14336)
    got = {(name, T, pdl): fm.overlap_gemms(T, K, E, I, 128, pdl)
           for name, (E, K, I) in (("olmoe", olmoe), ("qwen3", qwen3), ("mixtral", mixtral))
           for T in (8, 16, 64, 65) for pdl in (False, True)}
    assert {k for k, v in got.items() if v} == {("olmoe", 16, True), ("olmoe", 64, True), ("qwen3", 16, True),
                                                ("qwen3", 64, True)}
    for value, want in (("on", True), ("off", False)):
        monkeypatch.setattr(fm, "OVERLAP_GEMMS", value)
        assert fm.overlap_gemms(1, 2, 8, 14336, 128, False) is want
    monkeypatch.setattr(fm, "OVERLAP_GEMMS", True)
    with pytest.raises(ValueError, match="OVERLAP_GEMMS"):
        fm.overlap_gemms(64, 8, 64, 1024, 128, True)


def test_overlap_gemms_not_for_small_or_small_dot(monkeypatch):
    """The flags belong to the aligned variant's routed blocks: the decode GEMVs and small_dot never ask for them."""
    from minimoe.kernels import fused_moe as fm
    gen = torch.Generator().manual_seed(7)
    x, w13, w2 = make_layer(2, 12, torch.float32, gen)
    ids, weights = make_routing(2, 2, 12, "random", gen)
    ids, weights = ids.to(DEVICE), weights.to(DEVICE)
    monkeypatch.setattr(fm, "OVERLAP_GEMMS", "on")
    monkeypatch.setattr(fm, "_flags_for", lambda d, n: pytest.fail("flags asked for"))
    for variant in ("small", "small_dot"):
        cfg = dict(moe_configs.interpreter_config(), variant=variant)
        out = fused_moe(x, w13, w2, ids, weights, config=cfg)
        ref = reference_moe(x, w13, w2, ids, weights)
        assert ((out.double().cpu() - ref).norm() / ref.norm()).item() <= TOL[torch.float32]


def test_weight_tma_only_where_the_unit_can_address():
    """`_b_tma` takes the descriptor path for the config's routed aligned blocks only: not for a shared expert's
    launches, not for small_dot, and not for weights whose rows are not a multiple of 16 bytes."""
    from minimoe.kernels import fused_moe as fm
    cfg = {"b_tma": True}
    w = torch.zeros(4, 8, 40)                     # rows of 160 bytes
    blocks = fm._Blocks(*(w,) * 4, 1, 1, 0, 4, False)
    assert fm._b_tma(cfg, w, blocks, fm._Shared.none(w))
    assert not fm._b_tma({}, w, blocks, fm._Shared.none(w))
    assert not fm._b_tma(cfg, w, blocks._replace(small=True), fm._Shared.none(w))
    assert not fm._b_tma(cfg, w, blocks, fm._Shared(w, w, None, 2, 4))
    assert not fm._b_tma(cfg, torch.zeros(4, 8, 6), blocks, fm._Shared.none(w))     # rows of 24 bytes


def run_small(T, E, K, dtype, offset, n_global, config=None, seed=0, d=40, i=44):
    """Relative error of fused_moe's decode variant against the oracle. Under an offset the first
    slot is made local and the last foreign, so both kinds are always there."""
    gen = torch.Generator().manual_seed(seed)
    x, w13, w2 = make_layer(T, E, dtype, gen, d, i)
    ids, weights = make_routing(T, K, n_global, "random", gen)
    if offset > 0:
        ids[-1, -1], ids[0, 0] = offset - 1, offset + E - 1  # T·K = 1: the one slot is local
    ids, weights = ids.to(DEVICE), weights.to(DEVICE)
    config = dict(config or {}, variant="small")
    out = fused_moe(x, w13, w2, ids, weights, expert_offset=offset, config=config)
    ref = reference_moe(x, w13, w2, ids, weights, offset)
    assert out.shape == (T, d) and out.dtype == dtype
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


# Every (E, K, T) of these where plan() picks the GEMV kernels by itself. D = 40 and I = 44 are
# multiples of neither the interpreter's 16 x 32 tiles nor 16: row wrap and K masks both run.
SMALL_SHAPES = [(E, K, T) for E in (6, 8, 12, 60, 64) for K in (1, 2, 3) for T in (1, 2)
                if plan(T, K, E) == "small"]


@pytest.mark.parametrize("E,K,T", SMALL_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_small_gemv_matches_reference(E, K, T, dtype):
    # fp16 runs under an expert-parallel offset: ids span 2E experts, about half of them foreign.
    offset, n_global = (0, E) if dtype == torch.float32 else (E // 2, 2 * E)
    seed = zlib.crc32(repr((E, K, T, str(dtype))).encode())
    err = run_small(T, E, K, dtype, offset, n_global, seed=seed)
    assert err <= TOL[dtype], f"relative error {err:.2e}"


ODD_SMALL = [  # BLOCK_N past I and D, BLOCK_N = 1, BLOCK_K = 16, 1-2 warps, deep pipelines
    {"BLOCK_N": 64, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2,
     "down": {"BLOCK_N": 1, "BLOCK_K": 128, "num_warps": 1, "num_stages": 3}},
    {"BLOCK_N": 1, "BLOCK_K": 64, "down": {"BLOCK_N": 64, "BLOCK_K": 16, "num_stages": 4}},
    {"BLOCK_N": 4},  # the rest from the heuristic
]


@pytest.mark.parametrize("n", range(len(ODD_SMALL)))
def test_small_config_override(n):
    # Aligned-path keys beside "small" (as in a tuned file) must not reach the GEMV kernels.
    config = dict(moe_configs.interpreter_config(), BLOCK_N=128, small=ODD_SMALL[n])
    err = run_small(2, 60, 3, torch.float32, 5, 70, config, seed=n)
    assert err <= TOL[torch.float32], f"relative error {err:.2e}"


def test_small_some_and_all_slots_foreign():
    """Slots routed off this rank add exactly 0: a token whose K slots are all foreign gets zeros,
    the others match the oracle."""
    gen = torch.Generator().manual_seed(3)
    x, w13, w2 = make_layer(2, 8, torch.float32, gen, 40, 44)
    # This rank holds experts 8..15: token 0's slots are all foreign, token 1 has one foreign slot.
    ids = torch.tensor([[1, 2, 7], [12, 0, 15]], device=DEVICE)
    weights = torch.rand(2, 3, generator=gen).to(DEVICE)
    config = {"variant": "small"}
    out = fused_moe(x, w13, w2, ids, weights, expert_offset=8, config=config)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    ref = reference_moe(x, w13, w2, ids, weights, 8)
    assert ((out[1].double().cpu() - ref[1]).norm() / ref[1].norm()).item() <= TOL[torch.float32]


PRESET_SHAPES = {"olmoe": (64, 8, 1024, 2048), "qwen3": (128, 8, 768, 2048),  # E, K, I, D
                 "mixtral": (8, 2, 14336, 4096), "qwen15": (60, 4, 1408, 2048),
                 "dsv2lite": (64, 6, 1408, 2048)}


@pytest.mark.parametrize("name", PRESET_SHAPES)
def test_small_default_config_is_the_measured_one(name):
    """The H200's tiles: gate_up [4, 1024]; down [8, 512] x 3 stages, except at T = 1 for experts narrower than 4096
    ([4, 1024], 2 warps: the nineteenth session's in-step win); BLOCK_K never past the reduction dim, powers of 2."""
    E, K, I, D = PRESET_SHAPES[name]
    for T in (1, 2):
        cfg = fused_moe_small.small_default_config(E, I, D, K, T, torch.bfloat16, sms=132)
        narrow_t1 = T == 1 and I < 4096
        assert (cfg["BLOCK_N"], cfg["down"]["BLOCK_N"], cfg["down"]["num_stages"]) == (4, 4 if narrow_t1 else 8, 3)
        assert cfg["down"]["num_warps"] == (2 if narrow_t1 else 4)
        for c, red in ((cfg, D), (cfg["down"], I)):
            bk = c["BLOCK_K"]
            assert bk & (bk - 1) == 0 and bk <= triton.next_power_of_2(red)
    small = fused_moe_small.small_default_config(8, 40, 24, 2, 1, torch.bfloat16, sms=132)
    assert small["BLOCK_K"] == 32 and small["down"]["BLOCK_K"] == 64


def test_small_configs_merge():
    """config["small"] and its "down" override key by key; nothing else in config is read."""
    base = fused_moe_small.small_default_config(64, 1024, 2048, 8, 1, torch.bfloat16)
    tuned_aligned = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 16,
                     "num_warps": 8, "num_stages": 4, "down": {"BLOCK_N": 256}}
    g, d = fused_moe_small.small_configs(tuned_aligned, 64, 1024, 2048, 8, 1, torch.bfloat16)
    assert g == {k: base[k] for k in fused_moe_small.SMALL_KEYS} and d == base["down"]
    g, d = fused_moe_small.small_configs({"small": {"BLOCK_K": 8, "down": {"num_warps": 1}}},
                                         64, 1024, 2048, 8, 1, torch.bfloat16)
    assert g["BLOCK_K"] == 8 and g["BLOCK_N"] == base["BLOCK_N"]
    assert d == dict(base["down"], num_warps=1)


def test_small_tiles_override_one_shape(monkeypatch):
    """SMALL_TILES[(E, I, D, K)] sits between the heuristic and a config's "small": only that shape, key by key."""
    base = fused_moe_small.small_default_config(64, 1024, 2048, 8, 1, torch.bfloat16)
    monkeypatch.setitem(small_configs.SMALL_TILES, (64, 1024, 2048, 8),
                        {"BLOCK_N": 2, "down": {"BLOCK_N": 4, "num_stages": 2}})
    base2 = fused_moe_small.small_default_config(64, 1024, 2048, 8, 2, torch.bfloat16)   # the rule differs at T = 2
    g, d = fused_moe_small.small_configs(None, 64, 1024, 2048, 8, 2, torch.bfloat16)
    assert g == dict({k: base2[k] for k in fused_moe_small.SMALL_KEYS}, BLOCK_N=2)
    assert d == dict(base2["down"], BLOCK_N=4, num_stages=2)
    g, d = fused_moe_small.small_configs({"small": {"BLOCK_N": 8, "down": {"BLOCK_N": 16}}}, 64, 1024, 2048, 8, 1,
                                         torch.bfloat16)
    assert g["BLOCK_N"] == 8 and d["BLOCK_N"] == 16 and d["num_stages"] == 2       # a config's "small" still wins
    g, d = fused_moe_small.small_configs(None, 64, 512, 2048, 8, 1, torch.bfloat16)  # another shape: untouched
    assert g["BLOCK_N"] == base["BLOCK_N"] and d["num_stages"] == base["down"]["num_stages"]
    monkeypatch.setitem(small_configs.SMALL_TILES, None, {"down": {"num_warps": 8}})     # every other shape
    _, d = fused_moe_small.small_configs(None, 64, 512, 2048, 8, 1, torch.bfloat16)
    _, d_own = fused_moe_small.small_configs(None, 64, 1024, 2048, 8, 1, torch.bfloat16)
    assert d["num_warps"] == 8 and d_own["num_warps"] == base["down"]["num_warps"]
    for typo in ({"num_stage": 2}, {"down": {"BLOCK_n": 4}}):                               # refused, not ignored
        monkeypatch.setitem(small_configs.SMALL_TILES, None, typo)
        with pytest.raises(ValueError, match="unknown keys"):
            fused_moe_small.small_configs(None, 64, 512, 2048, 8, 1, torch.bfloat16)


def test_step_tiles_one_gpu_one_shape_one_T(monkeypatch):
    """STEP_TILES[GPU][(E, I, D, K, T, shared)] replaces the rule's keys for that GPU, shape, T and shared-expert fusion
    only, in bf16 only; SMALL_TILES and a config's "small" still win; a misspelt key is refused; the interpreter never
    reads it."""
    monkeypatch.setattr(small_configs, "on_gpu", lambda: True)
    monkeypatch.setattr(small_configs, "device_name", lambda: "TEST_GPU")
    shape = (60, 1408, 2048, 4)
    monkeypatch.setitem(small_configs.STEP_TILES, "TEST_GPU",
                        {(*shape, 1, True): {"BLOCK_N": 2, "BLOCK_K": 2048, "down": {"num_stages": 4}}})
    bf16 = torch.bfloat16
    base = small_configs.small_default_config(*shape, 1, bf16)
    g, d = small_configs.small_configs(None, *shape, 1, bf16, shared=True)
    assert g == dict({k: base[k] for k in small_configs.SMALL_KEYS}, BLOCK_N=2, BLOCK_K=2048)
    assert d == dict(base["down"], num_stages=4) and base["down"]["num_stages"] != 4
    untouched = [(shape, 2, bf16, True), ((64, 1408, 2048, 6), 1, bf16, True),          # T = 2; another shape
                 (shape, 1, bf16, False), (shape, 1, torch.float16, True)]               # not fused; not bf16
    for shp, T, dtype, shared in untouched:
        rule = small_configs.small_default_config(*shp, T, dtype)
        g, d = small_configs.small_configs(None, *shp, T, dtype, shared=shared)
        assert g == {k: rule[k] for k in small_configs.SMALL_KEYS} and d == rule["down"]
    monkeypatch.setitem(small_configs.SMALL_TILES, None, {"BLOCK_N": 8})
    g, _ = small_configs.small_configs(None, *shape, 1, bf16, shared=True)
    assert g["BLOCK_N"] == 8 and g["BLOCK_K"] == 2048                                     # A/B over the table
    g, _ = small_configs.small_configs({"small": {"BLOCK_N": 1}}, *shape, 1, bf16, shared=True)
    assert g["BLOCK_N"] == 1
    monkeypatch.setitem(small_configs.SMALL_TILES, None, {})
    monkeypatch.setitem(small_configs.STEP_TILES, "TEST_GPU", {(*shape, 1, True): {"BLOCK_KK": 2}})
    with pytest.raises(ValueError, match="STEP_TILES: unknown keys"):
        small_configs.small_configs(None, *shape, 1, bf16, shared=True)
    monkeypatch.setattr(small_configs, "on_gpu", lambda: False)                           # interpreter: not read
    g, _ = small_configs.small_configs(None, *shape, 1, bf16, shared=True)
    assert g == {k: small_configs.small_default_config(*shape, 1, bf16)[k] for k in small_configs.SMALL_KEYS}


def test_step_tiles_entries_are_valid_tiles():
    """Every shipped STEP_TILES entry names only tile keys, with BLOCK_K within the reduction's power of 2, at a
    (T, K, E) where fused_moe.plan picks the decode GEMVs."""
    from minimoe.kernels.fused_moe import SMALL_BATCH_RATIO
    for table in small_configs.STEP_TILES.values():
        for (E, I, D, K, T, shared), tile in table.items():
            assert isinstance(shared, bool)
            small_configs._over(small_configs.small_default_config(E, I, D, K, T, torch.bfloat16, sms=132), tile, "t")
            assert tile.get("BLOCK_K", 1) <= triton.next_power_of_2(D)
            assert tile.get("down", {}).get("BLOCK_K", 1) <= triton.next_power_of_2(I)
            assert T * K * SMALL_BATCH_RATIO <= E and plan(T, K, E) == "small"


@needs_cuda
@pytest.mark.parametrize("T", [1, 64, 1024, 4096])  # small, one-program align, torch align
def test_cuda_graph_replay_matches_eager(T):
    """The call must capture (no host sync) and a replay must follow new routing in place."""
    E, K = 8, 2
    gen = torch.Generator().manual_seed(T)
    x, w13, w2 = make_layer(T, E, torch.bfloat16, gen)
    ids, weights = (t.to(DEVICE) for t in make_routing(T, K, E, "random", gen))
    ids = ids.to(torch.int32)
    fused_moe(x, w13, w2, ids, weights)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, w13, w2, ids, weights)
    new_ids, new_weights = (t.to(DEVICE) for t in make_routing(T, K, E, "random", gen))
    ids.copy_(new_ids)
    weights.copy_(new_weights)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fused_moe(x, w13, w2, ids, weights))


@pytest.mark.parametrize("variant", ["aligned", "small", "small_dot"])
def test_all_ids_foreign_gives_zero(variant):
    gen = torch.Generator().manual_seed(7)
    x, w13, w2 = make_layer(5, 6, torch.float32, gen)
    ids = torch.randint(0, 6, (5, 2), generator=gen).to(DEVICE)           # layer holds 6..11
    config = dict(moe_configs.interpreter_config(), variant=variant)
    out = fused_moe(x, w13, w2, ids, torch.ones(5, 2, device=DEVICE), expert_offset=6,
                    config=config)
    assert torch.equal(out, torch.zeros_like(out))


def test_torch_alignment_path_end_to_end(monkeypatch):
    monkeypatch.setattr(moe_align, "ONE_PROGRAM_MAX_NUMEL", 0)  # force the prefill path
    gen = torch.Generator().manual_seed(11)
    x, w13, w2 = make_layer(64, 8, torch.float32, gen)
    ids, weights = make_routing(64, 2, 10, "random", gen)
    out = fused_moe(x, w13, w2, ids.to(DEVICE), weights.to(DEVICE), expert_offset=1)
    ref = reference_moe(x, w13, w2, ids, weights, 1)
    assert ((out.double().cpu() - ref).norm() / ref.norm()).item() <= TOL[torch.float32]


def test_zero_tokens():
    x, w13, w2 = make_layer(0, 4, torch.float32, torch.Generator().manual_seed(0))
    ids = torch.zeros(0, 2, dtype=torch.int64, device=DEVICE)
    assert fused_moe(x, w13, w2, ids, torch.zeros(0, 2, device=DEVICE)).shape == (0, D)


@pytest.mark.parametrize("numel,E,block_m,offset", [(1, 6, 16, 0), (37 * 3, 8, 4, 5), (200, 12, 16, 0)])
def test_alignment_contract(numel, E, block_m, offset):
    gen = torch.Generator().manual_seed(numel)
    ids = torch.randint(0, E + offset + 3, (numel,), generator=gen).to(DEVICE).view(-1, 1)
    results = [moe_align.align_tokens_by_expert(ids, E, block_m, offset, method=m)
               for m in ("triton", "torch")]
    for a, b in zip(*results):  # both paths give the same answer, order inside an expert included
        assert torch.equal(a, b)
    sorted_ids, block_expert, num_padded = (t.cpu() for t in results[0])
    local = ids.view(-1).cpu().long() - offset
    mine = (local >= 0) & (local < E)
    total = int(num_padded)
    assert total % block_m == 0 and len(sorted_ids) == len(block_expert) * block_m
    live = sorted_ids[:total]
    real = live[live < numel].long()
    # every local (token, slot) pair exactly once, foreign ones never
    assert torch.equal(real.sort().values, torch.nonzero(mine).view(-1))
    assert torch.all(sorted_ids[total:] == numel)
    for b in range(len(block_expert)):
        rows = sorted_ids[b * block_m:(b + 1) * block_m]
        if b * block_m >= total:
            assert block_expert[b] == -1
            continue
        rows = rows[rows < numel].long()
        assert len(rows) > 0, "a live block with no real row is wasted work"
        assert torch.all(local[rows] == block_expert[b])
        assert torch.all(rows[:-1] < rows[1:])  # ascending flat order inside an expert
    counts = torch.bincount(local[mine], minlength=E)
    assert total == int(((counts + block_m - 1) // block_m * block_m).sum())


def test_plan_rule():
    assert plan(1, 8, 64) == plan(2, 8, 64) == "small"  # OLMoE decode at batch 1-2
    assert plan(3, 8, 64) == "aligned"
    assert plan(1, 2, 8) == "small" and plan(2, 2, 8) == "aligned"  # Mixtral
    assert plan(64, 8, 64, {"variant": "small"}) == "small"


def test_config_lookup(tmp_path, monkeypatch):
    tpe_blocks = [moe_configs.default_config(64, 1024, 2048, 8, T, torch.bfloat16)["BLOCK_M"]
                  for T in (1, 64, 128, 256, 4096)]
    assert tpe_blocks == [16, 16, 32, 64, 128]
    for T in (1, 64, 4096):
        cfg = moe_configs.default_config(8, 14336, 4096, 2, T, torch.bfloat16)
        down = moe_configs.down_config(cfg)
        for c, n_b in ((cfg, 2), (down, 1)):
            per_stage = (c["BLOCK_M"] * c["BLOCK_K"] + n_b * c["BLOCK_K"] * c["BLOCK_N"]) * 2
            assert per_stage * c["num_stages"] <= moe_configs.SMEM_BUDGET
        assert down["BLOCK_M"] == cfg["BLOCK_M"]
    path = tmp_path / "tuned.json"
    table = {"1": {"BLOCK_M": 16}, "64": {"BLOCK_M": 32}, "4096": {"BLOCK_M": 128}}
    path.write_text(json.dumps({"meta": {}, "configs": table}))
    tuned = moe_configs.load_tuned(str(path))
    picks = [moe_configs.nearest_bucket(tuned, T)["BLOCK_M"] for T in (1, 6, 10, 600, 10**6)]
    assert picks == [16, 16, 32, 128, 128]  # nearest in log T: 10 is nearer 64 than 1
    # the probe knob replaces one bucket's entry and nothing else, and a caller's edit does not reach the table
    monkeypatch.setattr(moe_configs, "BUCKET_OVERRIDES", {64: {"BLOCK_M": 64, "b_tma": True}})
    picks = [moe_configs.nearest_bucket(tuned, T) for T in (1, 10, 600)]
    assert [c["BLOCK_M"] for c in picks] == [16, 64, 128] and picks[1]["b_tma"] is True
    picks[1]["BLOCK_M"] = 0
    assert moe_configs.BUCKET_OVERRIDES[64]["BLOCK_M"] == 64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_rule_tiles(dtype, monkeypatch):
    """From PREFILL_TMA_MIN_ROWS (512) routed rows an expert: the rule's TMA prefill tiles (GEMM1 128 x 128 x 32, GEMM2
    128 x 256 x 64, both b_tma, the tuner's depths within the budget); below it, with the threshold at None, or with
    prefill_tma=False, the pointer tiles it gave before; prefill_tma=True takes them from 129 rows; the quantized path's
    untuned tiles never carry b_tma."""
    from minimoe.kernels import fused_moe_quant
    assert moe_configs.PREFILL_TMA_MIN_ROWS == 512
    elem = torch.finfo(dtype).bits // 8
    for shape, T in (((64, 1024, 2048, 8), 4096), ((160, 1536, 5120, 6), 16384), ((8, 14336, 4096, 2), 2048)):
        E, I, D, K = shape
        assert T * K / E >= 512
        cfg = moe_configs.default_config(E, I, D, K, T, dtype)
        down = moe_configs.down_config(cfg)
        assert (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["GROUP_M"], cfg["b_tma"]) == (128, 128, 32, 16, True)
        assert (down["BLOCK_N"], down["BLOCK_K"], down["b_tma"]) == (256, 64, True)
        for c, n_b in ((cfg, 2), (down, 1)):
            per_stage = (c["BLOCK_M"] * c["BLOCK_K"] + n_b * c["BLOCK_K"] * c["BLOCK_N"]) * elem
            assert 2 <= c["num_stages"] and per_stage * c["num_stages"] <= moe_configs.SMEM_BUDGET
        assert (cfg["num_stages"], down["num_stages"]) == ((5, 4) if elem == 2 else (4, 2))   # the tuner's depths
        old = moe_configs.default_config(E, I, D, K, T, dtype, prefill_tma=False)
        assert "b_tma" not in old and "b_tma" not in old["down"] and old["BLOCK_K"] == 64 and old["GROUP_M"] == 16
        monkeypatch.setattr(moe_configs, "PREFILL_TMA_MIN_ROWS", None)
        assert moe_configs.default_config(E, I, D, K, T, dtype) == old
        assert moe_configs.default_config(E, I, D, K, T, dtype, prefill_tma=True) == cfg
        monkeypatch.setattr(moe_configs, "PREFILL_TMA_MIN_ROWS", 512)
        below = 511 * E // K                                     # just under 512 rows an expert: the pointer tiles
        assert below * K / E < 512 and "b_tma" not in moe_configs.default_config(E, I, D, K, below, dtype)
        assert moe_configs.default_config(E, I, D, K, below, dtype, prefill_tma=True)["b_tma"] is True
        T_mid = 128 * E // K                                     # exactly 128 rows: never, even when asked
        assert "b_tma" not in moe_configs.default_config(E, I, D, K, T_mid, dtype, prefill_tma=True)
    monkeypatch.setattr(fused_moe_quant, "on_gpu", lambda: True)
    from minimoe import qweights as Q
    w = Q.quantize_int4(torch.randn(8, 96, 64), 32)
    qcfg = fused_moe_quant.untuned_config(w, w, 8, 48, 64, 2, 8192)
    assert "b_tma" not in qcfg and "b_tma" not in moe_configs.down_config(qcfg)


def test_hopper_gpus_read_the_h200_tables(tmp_path, monkeypatch):
    """tuned_table: a GPU's own file first; another Hopper GPU without one reads HOPPER_FALLBACK's (the H200's, once
    set: None by default until measured); a non-Hopper GPU, the fallback device itself, or HOPPER_FALLBACK None get
    None (the rule); get_config follows it."""
    assert moe_configs.HOPPER_FALLBACK is None
    E, I, D, K = 8, 40, 64, 2
    h200 = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}
    (tmp_path / moe_configs.config_file_name(E, I, D, K, torch.bfloat16, "NVIDIA_H200")).write_text(
        json.dumps({"configs": {"64": h200}}))
    monkeypatch.setattr(moe_configs, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(moe_configs, "on_gpu", lambda: True)
    for name, hopper, fallback, want in (("NVIDIA_H100_80GB_HBM3", True, "NVIDIA_H200", h200),
                                         ("NVIDIA_H100_80GB_HBM3", False, "NVIDIA_H200", None),    # an sm80 part
                                         ("NVIDIA_H100_80GB_HBM3", True, None, None),
                                         ("NVIDIA_H200", True, "NVIDIA_H200", h200)):              # its own file
        monkeypatch.setattr(moe_configs, "device_name", lambda n=name: n)
        monkeypatch.setattr(moe_configs, "_hopper", lambda h=hopper: h)
        monkeypatch.setattr(moe_configs, "HOPPER_FALLBACK", fallback)
        got = moe_configs.tuned_table(E, I, D, K, torch.bfloat16)
        assert (got[64] if got else None) == want, (name, hopper, fallback)
        cfg = moe_configs.get_config(E, I, D, K, 64, torch.bfloat16)
        assert cfg == (want or moe_configs.default_config(E, I, D, K, 64, torch.bfloat16)), (name, hopper, fallback)
    own = dict(h200, BLOCK_N=64)                             # an H100 file of its own wins over the fallback
    (tmp_path / moe_configs.config_file_name(E, I, D, K, torch.bfloat16, "NVIDIA_H100_80GB_HBM3")).write_text(
        json.dumps({"configs": {"64": own}}))
    moe_configs.load_tuned.cache_clear()                      # its miss above was cached
    monkeypatch.setattr(moe_configs, "device_name", lambda: "NVIDIA_H100_80GB_HBM3")
    monkeypatch.setattr(moe_configs, "HOPPER_FALLBACK", "NVIDIA_H200")
    assert moe_configs.tuned_table(E, I, D, K, torch.bfloat16)[64] == own


def test_tune_merge_keeps_other_buckets(tmp_path, monkeypatch):
    """tune_fused_moe.py --merge: the tuned buckets replace theirs, the file's other buckets stay with their own µs
    and tuning dates, and buckets come out in token order."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "tune_fused_moe", Path(__file__).resolve().parents[1] / "scripts" / "tune_fused_moe.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    E, D, I, K = tune.PRESETS["olmoe"]
    path = tmp_path / moe_configs.config_file_name(E, I, D, K, torch.bfloat16)
    old = {"meta": {"date": "2026-11-28", "us_per_call": {"1": 30.0, "64": 280.0}},
           "configs": {"1": {"BLOCK_M": 16}, "64": {"BLOCK_M": 16}}}
    path.write_text(json.dumps(old))
    monkeypatch.setattr(tune.time, "strftime", lambda fmt: "2026-12-04")
    tune.write_table("olmoe", torch.bfloat16, {"64": {"BLOCK_M": 32}, "8": {"BLOCK_M": 16, "b_tma": True}},
                     {"64": 270.0, "8": 150.0}, tmp_path, merge=True)
    got = json.loads(path.read_text())
    assert list(got["configs"]) == ["1", "8", "64"] and got["configs"]["64"] == {"BLOCK_M": 32}
    assert got["configs"]["1"] == {"BLOCK_M": 16} and got["meta"]["us_per_call"] == {"1": 30.0, "8": 150.0, "64": 270.0}
    assert got["meta"]["tuned_on"] == {"1": "2026-11-28", "8": "2026-12-04", "64": "2026-12-04"}
    tune.write_table("olmoe", torch.bfloat16, {"8": {"BLOCK_M": 16}}, {"8": 1.0}, tmp_path)     # no merge: replaced
    assert list(json.loads(path.read_text())["configs"]) == ["8"]


def test_tune_script_help():
    script = Path(__file__).resolve().parents[1] / "scripts" / "tune_fused_moe.py"
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--presets" in res.stdout


@pytest.mark.skipif(not INTERPRET, reason="the no-GPU refusal")
@pytest.mark.parametrize("script,args", [("untuned_shapes.py", ["--shapes", "granite-3b"]),
                                         ("tune_fused_moe.py", ["--presets", "olmoe", "--workers", "0"]),
                                         ("bench_attn_tiles.py", [])])
def test_gpu_scripts_refuse_without_a_gpu(script, args):
    """The GPU-only scripts exit 2 with one line on a machine without a CUDA GPU (an assert gave a traceback)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / script
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "GPU" in res.stderr, res.stderr


@pytest.mark.skipif(not INTERPRET, reason="the no-GPU refusal")
def test_rule_ab_script_refuses_without_a_gpu():
    """scripts/default_rule_ab.py: its shapes parse; without a GPU it exits 2 with one line; bad input (no cell where
    the rules differ, a T or a round count <= 0, a --json folder that does not exist) exits 2 naming it, first."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "default_rule_ab.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, str(script), "--shapes", "olmoe", "mixtral-chunk4"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "GPU" in res.stderr, res.stderr
    for args, says in ((["--buckets", "64"], "no (shape, T)"), (["--buckets", "-5"], "positive"),
                       (["--rounds", "0"], "positive"), (["--json", "/nonexistent/dir/x.json"], "does not exist")):
        res = subprocess.run([sys.executable, str(script), "--shapes", "olmoe", *args], capture_output=True,
                             text=True, env=env)
        assert res.returncode == 2 and says in res.stderr, (args, res.stderr)


@pytest.mark.skipif(not INTERPRET, reason="--check is the benchmark's CPU (interpreter) path")
def test_bench_small_check_mode():
    """The decode benchmark's --check path: every candidate config against the oracle, on the CPU."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_moe_small.py"
    res = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert res.returncode == 0 and "all correct" in res.stdout, res.stdout[-2000:] + res.stderr
