"""Guards the split-K router GEMV + top-k (kernels/gate_splitk.py; its one-launch fold with the RMSNorm in
kernels/gate_splitk_fold.py) against the engine's own PyTorch twin, `minimoe.ops.gate_route_torch`: the same experts
in the same slots, the same weights, for every way of cutting D into splits (the split count moves only the fp32
summation order)."""

import pytest
import torch

pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from minimoe.kernels.gate_splitk import default_splits, gate_route_splitk, usable  # noqa: E402
from minimoe.kernels.route import MAX_EXPERTS  # noqa: E402
from minimoe.ops import gate_route_torch  # noqa: E402
from test_norm_route import _check_skip  # noqa: E402  (the same assertions for every routing kernel)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# the interpreter has no bfloat16; on a GPU run the real kernel covers it too
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# weights, max|err| / max|ref|: scoring is fp32, but the logits are rounded to the gate's dtype
# first (as nn.Linear returns them); a logit that a different fp32 summation order rounds the
# other way moves by one ulp there (fp16 1e-3, bf16 8e-3 near 1) and a softmax weight by about that.
W_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
# (softmax_first, renorm, scaling): OLMoE / Qwen3 / DeepSeek-V2-style scaling / both / Mixtral
MODES = [(True, False, 1.0), (True, True, 1.0), (True, False, 2.5), (True, True, 2.5), (False, True, 1.0)]
needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _separated_case(T, E, D, dtype, gate_dtype, seed, gate=None, bump=False):
    """(h [T, D] in dtype, gate [E, D] in gate_dtype) whose logits are, per token, a shuffled grid
    4/E apart, so that both summation orders must pick the same experts (as in test_norm_route.py);
    for `gate` if given: new activations for the same layer. bump: each token's top logit raised by
    b falling from 1.6 (token 0) towards 0, so that skipping at beta = 0.3 / 0.6 drops none, some or
    all of a token's other slots.

    Built backwards from target logits z: h = pinv(gate) z + a null-space component (a dense h of
    rms ~1). Rounding h and the gate moves each logit by ~1e-3, far below the 4/E >= 0.03 gaps.
    Needs D >= E.
    """
    gen = torch.Generator().manual_seed(seed)
    if gate is None:
        gate = (torch.randn(E, D, generator=gen, dtype=torch.float64) * 2 / D ** 0.5).to(gate_dtype)
    g = gate.double().cpu()
    pinv = torch.linalg.pinv(g)  # [D, E]; D >= E, so g @ pinv = I
    z = torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).double() * (4.0 / E) - 2.0
    if bump:
        b = 1.6 * (1 - torch.arange(T, dtype=torch.float64) / T) ** 2  # [T]: 1.6 for token 0, then down to ~0
        z = z.scatter_add(1, z.argmax(-1, keepdim=True), b[:, None])  # [T, E]: the top moves further up
    hz = z @ pinv.T
    r = torch.randn(T, D, generator=gen, dtype=torch.float64)
    null = r - (r @ g.T) @ pinv.T  # orthogonal to the gate's rows: leaves the logits alone
    rms = lambda v: v.pow(2).mean(-1, keepdim=True).sqrt()  # noqa: E731
    null = null / rms(null) * (1.0 - rms(hz).clamp(max=0.8) ** 2).sqrt()
    return (hz + null).to(dtype).to(DEVICE), gate.to(DEVICE)


def _random_case(T, E, D, dtype, gate_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(T, D, generator=gen)
    gate = torch.randn(E, D, generator=gen) * 2 / D ** 0.5
    return h.to(dtype).to(DEVICE), gate.to(gate_dtype).to(DEVICE)


def _check(h, gate, k, kw, splits=None, block_d=None):
    w, ids = gate_route_splitk(h, gate, k, **kw, splits=splits, block_d=block_d)
    w_ref, ids_ref = gate_route_torch(h, gate, k, **kw)
    assert w.dtype == torch.float32 and ids.dtype == torch.int64 and w.shape == ids.shape == (h.shape[0], k)
    assert torch.equal(ids, ids_ref), "the same experts in the same slots"
    assert _rel_err(w, w_ref) <= W_TOL[gate.dtype]
    if gate.dtype != torch.float32:
        # Within W_TOL a missing rounding of the logits to the gate's dtype would pass, so check it
        # apart: the oracle's weights to fp32 precision, but for the rare token where a different
        # summation order rounds one of its logits the other way (without the rounding: every token).
        off = ((w - w_ref).abs().amax(-1) > 1e-5 * w_ref.abs().max()).sum().item()
        assert off <= max(1, h.shape[0] // 20), f"{off} of {h.shape[0]} tokens: logits not rounded as nn.Linear's"
    return w, ids


# (E, D, T, K, mode, splits, block_d). D tiles = cdiv(D, block_d or min(128, D)): the explicit
# splits cut them unevenly (3 or 7 of 8, 5 of 7 with a ragged last tile), into one, into more
# ranges than tiles (clamped), or by default_splits. Small D keeps the interpreter fast; one D = 2048.
CASES = [
    (8, 64, 1, 2, MODES[4], None, None),      # Mixtral-like: top-2 of 8, softmax after the top-k
    (8, 256, 3, 1, MODES[0], 3, 32),          # K = 1; 3 splits of 8 tiles (2 + 3 + 3)
    (60, 256, 3, 6, MODES[1], 7, 32),         # E not a power of two; 7 splits of 8 tiles
    (64, 256, 16, 8, MODES[2], 1, None),      # one split; a full block of 16 tokens
    (64, 200, 3, 6, MODES[3], 5, 32),         # D = 200: 7 tiles of 32, the last one ragged; 5 splits
    (128, 256, 1, 8, MODES[0], 100, 64),      # Qwen3-like E; 100 splits clamped to the 4 tiles
    (128, 256, 5, 8, MODES[1], None, None),   # E = 128, a ragged block of 5 tokens, default splits
    (64, 2048, 1, 8, MODES[0], None, None),   # OLMoE's shape: default splits = 16 ranges of 1 tile (8 x 128)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,D,T,K,mode,splits,block_d", CASES)
def test_matches_gate_route_torch(E, D, T, K, mode, splits, block_d, dtype):
    softmax_first, renorm, scaling = mode
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    h, gate = _separated_case(T, E, D, dtype, dtype, seed=E * D + T)
    _check(h, gate, K, kw, splits, block_d)


# (E, D, T, K, mode, splits, block_d): one token of top-4 of 60, 2 uneven splits of 3 tiles; top-8 of 64,
# renormalised and scaled, 5 splits of a ragged D; Mixtral-like top-2 of 8, default splits
SKIP_CASES = [(60, 96, 1, 4, MODES[0], 2, 32), (64, 200, 3, 8, MODES[3], 5, 32),
              (8, 64, 5, 2, MODES[4], None, None)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("skip", [0.0, 0.3, 0.6])
@pytest.mark.parametrize("E,D,T,K,mode,splits,block_d", SKIP_CASES)
def test_skip_in_the_epilogue(E, D, T, K, mode, splits, block_d, skip, dtype):
    """Dynamic skipping in the reduce kernel's epilogue is `skip_small` on the kernel's own unskipped
    result, bit for bit, and drops exactly the twin's slots (weights to W_TOL, as unskipped)."""
    softmax_first, renorm, scaling = mode
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first, splits=splits, block_d=block_d)
    h, gate = _separated_case(T, E, D, dtype, dtype, seed=E + K, bump=True)
    w0, ids0 = gate_route_splitk(h, gate, K, **kw)                               # skip's default: off
    w, ids = gate_route_splitk(h, gate, K, **kw, skip=skip)
    w_ref, ids_ref = gate_route_torch(h, gate, K, renorm=renorm, scaling=scaling, softmax_first=softmax_first,
                                      skip=skip)
    _check_skip((w, ids), (w0, ids0), (w_ref, ids_ref), skip, dtype)


@pytest.mark.parametrize("E,D,T,K,mode,splits,block_d", [
    (64, 256, 3, 6, MODES[2], None, None),   # DeepSeek-V2-Lite-like: top-6 of 64, scaled, no renorm
    (60, 96, 5, 6, MODES[1], 3, 32),
])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp32_gate(E, D, T, K, mode, splits, block_d, dtype):
    """DeepSeek keeps its gate in fp32: h is cast to it (exact from half precision) and the logits
    stay fp32; fp32 activations with a half gate round h down to the gate's dtype first."""
    softmax_first, renorm, scaling = mode
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    h, gate = _separated_case(T, E, D, dtype, torch.float32, seed=E + D + T)
    _check(h, gate, K, kw, splits, block_d)
    if dtype == torch.float32:  # and the other way round: fp32 h, fp16 gate
        _check(h, gate.half(), K, kw, splits, block_d)


@pytest.mark.parametrize("E,D,T,K,mode,splits", [
    (8, 64, 3, 2, MODES[4], 3), (60, 128, 5, 6, MODES[1], None), (128, 256, 1, 8, MODES[3], 7),
])
def test_random_inputs_fp32(E, D, T, K, mode, splits):
    """Fresh random fp32 inputs, no separation: fp32 logits are ~1e-7 apart from the oracle's, so
    the chosen experts must be the same for these seeded draws."""
    softmax_first, renorm, scaling = mode
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    h, gate = _random_case(T, E, D, torch.float32, torch.float32, seed=E * T + D)
    _check(h, gate, K, kw, splits, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("softmax_first", [True, False])
def test_near_ties_resolved_in_fp32(dtype, softmax_first):
    """An fp32 gate whose experts come in pairs 2i, 2i + 1 with logits 1e-4 apart, the larger one
    at random: far below an fp16 ulp (a logit rounded to half precision anywhere would tie and
    give the lower index), far above fp32 summation error. Every split count must pick exactly the
    oracle's experts, pairs at the cut included, with h in fp32 and (DeepSeek's case) in fp16."""
    E, D, T, K = 32, 128, 3, 5
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(T, D, generator=gen).to(dtype).double()
    g = torch.randn(E, D, generator=gen, dtype=torch.float64) * 2 / D ** 0.5
    c = 1e-4 * torch.randint(0, 2, (T, E // 2), generator=gen).double().mul(2).sub(1)  # [T, pairs]
    # row 2i+1 = row 2i + delta_i with h @ delta_i = c[:, i] for every token: least-norm solution
    delta = (h.T @ torch.linalg.solve(h @ h.T, c)).T  # [pairs, D]
    g[1::2] = g[0::2] + delta
    gate, h = g.float().to(DEVICE), h.to(dtype).to(DEVICE)
    lg = h.double() @ gate.double().T
    assert ((lg[:, 1::2] - lg[:, 0::2]).abs() - 1e-4).abs().max() < 1e-6  # the pairs are as built
    kw = dict(renorm=True, scaling=1.0, softmax_first=softmax_first)
    for splits in (1, 3):  # of 4 tiles
        _check(h, gate, K, kw, splits, 32)


@pytest.mark.parametrize("softmax_first,renorm,scaling", MODES)
def test_all_equal_gate_rows_tie_to_lowest_index(softmax_first, renorm, scaling):
    """Identical gate rows give E exactly equal logits: the K lowest experts win, in index order,
    with the weights of a uniform softmax. torch.topk's tie order is unspecified, so the oracle's
    ids are not compared here, only the rule."""
    E, D, K, T = 60, 96, 4, 3
    h, gate = _separated_case(T, E, D, torch.float32, torch.float32, seed=1)
    gate = gate[:1].expand(E, D).contiguous()
    for splits in (1, 3) if renorm else (3,):  # of 3 tiles
        w, ids = gate_route_splitk(h, gate, K, renorm=renorm, scaling=scaling, softmax_first=softmax_first,
                                   splits=splits, block_d=32)
        assert ids.tolist() == [list(range(K))] * T
        share = 1.0 / (E if softmax_first and not renorm else K)
        assert torch.allclose(w, torch.full_like(w, share * scaling), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_gate_rows_tie_at_the_cut(dtype):
    """Experts e and e + E/2 share a gate row, so every logit comes in an exact pair (the same
    products summed in the same order). With K odd the K-th pick is half a pair: the lower index
    must win it. Slots: pairs in descending order, each pair lowest index first."""
    E, D, K, T = 16, 64, 3, 5
    h, gate = _separated_case(T, E // 2, D, dtype, dtype, seed=2)
    gate = torch.cat([gate, gate])
    w, ids = gate_route_splitk(h, gate, K, renorm=True, splits=3, block_d=16)
    w_ref, _ = gate_route_torch(h, gate, K, renorm=True)
    best = F.linear(h, gate[: E // 2]).float().argsort(-1, descending=True)
    pairs = torch.stack([best, best + E // 2], dim=-1).flatten(1)  # [T, E]: b0, b0+E/2, b1, ...
    assert torch.equal(ids, pairs[:, :K])
    assert _rel_err(w, w_ref) <= W_TOL[dtype]  # tied weights are equal, whichever twin is chosen


def test_splits_move_only_the_summation_order():
    """Any split count gives the same experts and the same weights to fp32 rounding; one split
    count gives bit-identical results call after call (a fixed reduction order, no atomics)."""
    E, D, T, K = 16, 128, 3, 4
    h, gate = _random_case(T, E, D, torch.float32, torch.float32, seed=9)
    w1, ids1 = gate_route_splitk(h, gate, K, renorm=True, splits=1, block_d=16)
    for splits in (2, 3, 8):  # of 8 tiles
        w, ids = gate_route_splitk(h, gate, K, renorm=True, splits=splits, block_d=16)
        assert torch.equal(ids, ids1) and _rel_err(w, w1) <= 1e-6
    w_again, ids_again = gate_route_splitk(h, gate, K, renorm=True, splits=3, block_d=16)
    w3, ids3 = gate_route_splitk(h, gate, K, renorm=True, splits=3, block_d=16)
    assert torch.equal(w_again, w3) and torch.equal(ids_again, ids3)


def test_no_tokens():
    gate = torch.randn(8, 64, device=DEVICE)
    w, ids = gate_route_splitk(torch.empty(0, 64, device=DEVICE), gate, 2, renorm=True)
    assert w.shape == ids.shape == (0, 2) and w.dtype == torch.float32 and ids.dtype == torch.int64


def test_default_splits():
    """One wave of programs on 132 SMs, whole D tiles per split (the docstring's examples)."""
    from minimoe.kernels.gate_splitk import BLOCK_D, BLOCK_E
    assert (BLOCK_E, BLOCK_D) == (16, 256)        # the measured tiles these numbers assume
    assert default_splits(1, 64, 2048) == 8       # OLMoE in the fold: 4 E tiles x 8 = 32 programs
    assert default_splits(1, 128, 2048) == 8      # Qwen3-30B: 8 x 8, one tile per split
    assert default_splits(1, 8, 4096) == 16       # Mixtral: 1 x 16
    assert default_splits(16, 64, 2048) == 8      # one block of 16 tokens: the same grid
    assert default_splits(1, 512, 2048) == 4      # 32 E tiles: 4 splits of two tiles fill 128 of 132
    assert default_splits(1, 512, 64) == 1        # one D tile
    assert default_splits(1, 64, 2048, sms=16) == 4   # 4 E tiles x 4 splits of two tiles
    assert default_splits(1, 64, 2048, block_d=128) == 16  # narrower tiles: 16 of them, 4 x 16 = 64 programs
    assert default_splits(1, 64, 2048, 132, 128, 8) == 16     # 8 x 128 tiles (fp32, unfolded): 8 x 16 = 128 programs
    for T, E, D in [(1, 64, 2048), (1, 128, 2048), (1, 8, 4096), (16, 60, 1000), (1, 512, 7168)]:
        s = default_splits(T, E, D)
        assert 1 <= s <= -(-D // BLOCK_D) and -(-E // BLOCK_E) * s <= 132 or s == 1


def test_tiles_by_gate_dtype(monkeypatch):
    """The fold with a 2-byte gate takes BLOCK_E x BLOCK_D and PREFETCH_GATE; fp32 gates and the unfolded kernel the
    OTHER tiles (fp32 in the fold: PREFETCH_GATE_FP32, off); every value read at call time."""
    from minimoe.kernels import gate_splitk
    tiles = gate_splitk.gate_tiles
    assert tiles(torch.bfloat16, True) == tiles(torch.float16, True) == (16, 256, True)
    assert tiles(torch.bfloat16, False) == tiles(torch.float32, False) == tiles(torch.float32, True) == (8, 128, False)
    assert tiles(torch.bfloat16, False, E=64) == tiles(torch.float32, False, E=128) == (8, 128, False)
    assert tiles(torch.bfloat16, False, E=128) == tiles(torch.float16, False, E=256) == (16, 256, False)  # wide gates
    monkeypatch.setattr(gate_splitk, "BLOCK_D", 64)
    monkeypatch.setattr(gate_splitk, "PREFETCH_GATE", False)
    monkeypatch.setattr(gate_splitk, "PREFETCH_GATE_FP32", True)
    assert tiles(torch.bfloat16, True) == (16, 64, False)   # read at call time: step_probe's knobs reach it
    assert tiles(torch.float32, True) == (8, 128, True) and tiles(torch.float32, False) == (8, 128, False)
    monkeypatch.setattr(gate_splitk, "BLOCK_E", 4)
    assert default_splits(1, 64, 2048) == 8                # 16 E tiles x 8 = 128: the module's tile, at call time


def test_usable():
    bf16, f32 = torch.bfloat16, torch.float32
    assert usable(1, 64, 2048, bf16, bf16)                   # OLMoE
    assert usable(16, 128, 2048, bf16, bf16)                 # Qwen3-30B at batch 16
    assert usable(4, 64, 2048, f32, bf16)                    # DeepSeek-V2-Lite's fp32 gate
    assert usable(1, 8, 4096, bf16, bf16)                    # Mixtral
    assert not usable(17, 64, 2048, bf16, bf16)              # past the decode sizes
    assert not usable(0, 64, 2048, bf16, bf16)
    assert not usable(1, MAX_EXPERTS + 1, 2048, bf16, bf16)  # past route.py's one-warp row
    assert not usable(1, 64, 2048, torch.float8_e4m3fn, bf16)


@needs_cuda
def test_capture_in_cuda_graph_with_pdl():
    """Replays from a CUDA graph with fresh activations copied in: no host sync inside, both launches
    (and their workspace) captured; with PDL where the GPU has it (sm90+)."""
    dtype = torch.bfloat16
    pdl = torch.cuda.get_device_capability()[0] >= 9
    h, gate = _separated_case(4, 64, 2048, dtype, dtype, seed=3)
    kw = dict(renorm=False, scaling=1.0)
    gate_route_splitk(h, gate, 8, **kw, pdl=pdl)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w, ids = gate_route_splitk(h, gate, 8, **kw, pdl=pdl)
    h.copy_(_separated_case(4, 64, 2048, dtype, dtype, seed=4, gate=gate)[0])
    graph.replay()
    w_ref, ids_ref = gate_route_torch(h, gate, 8, **kw)
    assert torch.equal(ids, ids_ref) and _rel_err(w, w_ref) <= W_TOL[dtype]
    w_eager, ids_eager = gate_route_splitk(h, gate, 8, **kw)
    assert torch.equal(w, w_eager) and torch.equal(ids, ids_eager), "graphed = eager, bit for bit"


# ---- residual add + RMSNorm + gate + top-k in one launch (gate_splitk_fold.norm_gate_route_splitk) ---

FUSED_CASES = [  # (E, D, T, K, mode, splits, residual)
    (64, 256, 1, 8, MODES[0], None, True),    # OLMoE-like at batch 1, default splits
    (60, 200, 3, 4, MODES[1], 5, True),       # ragged D tiles, E not a power of two
    (128, 256, 17, 8, MODES[2], 3, True),     # two token blocks (16 + 1): two arrival counters
    (8, 128, 2, 2, MODES[4], None, False),    # the first layer: no residual yet
    (64, 1024, 2, 8, MODES[3], 3, True),      # 4 D tiles of the fold's 256 (2-byte gates), 3 uneven splits
    (60, 1000, 1, 6, MODES[1], None, True),   # a ragged last tile at either tile width, default splits
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("E,D,T,K,mode,splits,residual", FUSED_CASES)
def test_norm_gate_route_equals_rms_norm_then_gate_route(E, D, T, K, mode, splits, residual, dtype):
    """Against the PyTorch twins run one after the other: the same residual stream bit for bit, h to
    a rounding (the fp32 order of mean(s²) differs), the same experts, weights to the gate's ulp; the
    counters come back zeroed and a second call gives the same bits."""
    from minimoe.kernels.gate_splitk_fold import norm_gate_route_splitk
    from minimoe.ops import rms_norm_torch
    h_target, gate = _separated_case(T, E, D, torch.float64, dtype, seed=E + D + T)
    gen = torch.Generator().manual_seed(T)
    nw = (1 + 0.2 * torch.rand(D, generator=gen, dtype=torch.float64)).to(DEVICE)
    s = h_target.double() / nw * 3.7                                  # rms-normalising s then x nw gives h
    r = torch.randn(T, D, generator=gen, dtype=torch.float64).to(DEVICE) if residual else None
    x = (s - (r if residual else 0)).to(dtype)
    r = r.to(dtype) if residual else None
    nw = nw.to(dtype)
    softmax_first, renorm, scaling = mode
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    cnt = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    h, res_out, w, ids = norm_gate_route_splitk(x, r, nw, 1e-6, gate, K, **kw, counters=cnt, splits=splits)
    h_ref, s_ref = rms_norm_torch(x, nw, 1e-6, r)
    w_ref, ids_ref = gate_route_torch(h_ref, gate, K, **kw)
    assert torch.equal(res_out, s_ref if residual else x)
    assert _rel_err(h, h_ref) <= (1e-6 if dtype == torch.float32 else 2e-3)
    assert torch.equal(ids, ids_ref), "the same experts in the same slots"
    assert _rel_err(w, w_ref) <= W_TOL[dtype]
    assert not cnt.any(), "the arrival counters must be left zeroed"
    again = norm_gate_route_splitk(x, r, nw, 1e-6, gate, K, **kw, counters=cnt, splits=splits)
    assert all(torch.equal(a, b) for a, b in zip((h, res_out, w, ids), again))


def test_wave_programs_knob_sets_the_split_count(monkeypatch):
    """gate_splitk.WAVE_PROGRAMS (an in-step probe's knob) replaces the SM count in default_splits, and the fused
    entry still equals its PyTorch twins with the split count it gives (2 here, against 4 by default)."""
    from minimoe.kernels import gate_splitk
    seen = []
    real = gate_splitk.default_splits
    monkeypatch.setattr(gate_splitk, "default_splits", lambda *a: seen.append((a[3], real(*a))) or real(*a))
    monkeypatch.setattr(gate_splitk, "WAVE_PROGRAMS", 8)
    test_norm_gate_route_equals_rms_norm_then_gate_route(64, 1024, 1, 8, MODES[0], None, True, torch.float16)
    assert seen and set(seen) == {(8, 2)} and real(1, 64, 1024, 132) == 4
    assert real(1, 64, 2048, 16) == 4 < real(1, 64, 2048, 132) == 8


@pytest.mark.parametrize("E,D,T,gate_dtype", [(128, 1024, 1, torch.float16), (60, 1000, 1, torch.float16),
                                               (64, 1024, 3, torch.float32)])
def test_hoisted_gate_tile_changes_no_bit(E, D, T, gate_dtype, monkeypatch):
    """gate_splitk.HOIST_TILE (the split's one gate tile loaded before the row reduction) where every split holds one
    tile (the default split count here: 4 tiles of 256, or 8 of 128 for the fp32 gate; a ragged last tile at
    D = 1000): the kernel takes it, and every output is the bits of the loop's load."""
    from minimoe.kernels import gate_splitk, gate_splitk_fold
    x, gate = _separated_case(T, E, D, torch.float16, gate_dtype, seed=E + D)
    r = torch.randn_like(x)
    nw = (1 + 0.2 * torch.rand(D, device=DEVICE)).to(torch.float16)
    kw = dict(renorm=True, counters=torch.zeros(4, dtype=torch.int32, device=DEVICE))
    monkeypatch.setattr(gate_splitk, "HOIST_TILE", False)           # the default (measured no faster)
    off = gate_splitk_fold.norm_gate_route_splitk(x, r, nw, 1e-6, gate, 8, **kw)
    hoisted = []
    real = gate_splitk._gate_partial_kernel

    class Spy:
        def __getitem__(self, grid):
            return lambda *a, **k: hoisted.append(k["HOIST"]) or real[grid](*a, **k)
    monkeypatch.setattr(gate_splitk, "_gate_partial_kernel", Spy())
    monkeypatch.setattr(gate_splitk, "HOIST_TILE", True)
    on = gate_splitk_fold.norm_gate_route_splitk(x, r, nw, 1e-6, gate, 8, **kw)
    assert hoisted == [True]
    assert all(torch.equal(a, b) for a, b in zip(off, on))
    gate_splitk_fold.norm_gate_route_splitk(x, r, nw, 1e-6, gate, 8, splits=3, **kw)   # 3 splits of 4 or 8 tiles
    assert hoisted == [True, False]


class _KeepCompiled:
    """Wraps a Triton kernel: launches it as before and keeps what each launch returns (the compiled kernel)."""

    def __init__(self, kernel):
        self.kernel, self.compiled = kernel, []

    def __getitem__(self, grid):
        return lambda *a, **kw: self.compiled.append(self.kernel[grid](*a, **kw))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("E,gate_dtype", [(64, torch.bfloat16), (128, torch.bfloat16), (60, torch.bfloat16),
                                          (64, torch.float32)])
def test_gate_prefetch_before_the_wait_changes_no_bit(E, gate_dtype, monkeypatch):
    """PREFETCH_GATE (PREFETCH_GATE_FP32 for the fp32 gate; the L2 hint before gdc_wait, PDL launches only) on OLMoE /
    Qwen3-30B-A3B / DeepSeek-V2-Lite-sized folds and an E that wraps the last tile: the prefetch is in the compiled
    kernel, and the outputs are unchanged."""
    from minimoe.kernels import gate_splitk, gate_splitk_fold
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL and the bulk L2 prefetch need sm90+")
    x, gate = _separated_case(1, E, 2048, torch.bfloat16, gate_dtype, seed=5)
    assert gate_splitk_fold._prefetchable(gate, gate_splitk.gate_tiles(gate_dtype, True)[1])
    r = torch.randn_like(x)
    nw = torch.ones(2048, dtype=torch.bfloat16, device=DEVICE)
    cnt = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    kw = dict(renorm=False, counters=cnt, pdl=True)
    monkeypatch.setattr(gate_splitk, "PREFETCH_GATE", False)
    monkeypatch.setattr(gate_splitk, "PREFETCH_GATE_FP32", False)
    off = gate_splitk_fold.norm_gate_route_splitk(x, r, nw, 1e-6, gate, 8, **kw)
    spy = _KeepCompiled(gate_splitk._gate_partial_kernel)
    monkeypatch.setattr(gate_splitk, "_gate_partial_kernel", spy)
    monkeypatch.setattr(gate_splitk, "PREFETCH_GATE", True)
    monkeypatch.setattr(gate_splitk, "PREFETCH_GATE_FP32", True)
    on = gate_splitk_fold.norm_gate_route_splitk(x, r, nw, 1e-6, gate, 8, **kw)
    assert all(torch.equal(a, b) for a, b in zip(off, on))
    ptx = getattr(spy.compiled[-1], "asm", {}).get("ptx", "")
    assert "cp.async.bulk.prefetch.L2" in ptx, "the knob did not reach the kernel"
