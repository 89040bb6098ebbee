"""Guards the fused add + RMSNorm + router GEMV + top-k kernel (norm_route.py) against the engine's
own unfused pieces: the same residual stream bit for bit, the same h, the same experts chosen."""

import itertools
import pytest
import torch

pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from minimoe.kernels.norm_route import gate_route, norm_route, usable  # noqa: E402
from minimoe.ops import gate_route_torch, rms_norm_torch  # noqa: E402
from minimoe.ops import route_topk_torch as route_topk_ref  # noqa: E402
from minimoe.router import skip_small  # noqa: E402


def norm_route_ref(x, residual, norm_weight, gate_weight, eps, k, *, renorm, scaling=1.0, softmax_first=True,
                   skip=0.0):
    """The oracle, from the engine's own PyTorch twins: RMSNorm (+ add), then the gate GEMV + top-k."""
    h, s = rms_norm_torch(x, norm_weight, eps, residual)
    w, ids = gate_route_torch(h.reshape(-1, x.shape[-1]), gate_weight, k, renorm=renorm, scaling=scaling,
                              softmax_first=softmax_first, skip=skip)
    return h, (x if residual is None else s), w, ids

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# the interpreter has no bfloat16; on a GPU run the real kernel covers it too
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# h: max|err| / max|ref|, and the share of half values allowed to differ at all, as in
# tests/test_small_kernels.py (a different fp32 summation order of mean(s²) flips a rare ulp).
H_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
MAX_FLIPS = 0.01
# weights: scoring is fp32, but the logits are rounded to the activations' dtype first (as the
# engine's nn.Linear rounds them); a logit of magnitude < 2.5 that rounds the other way moves by
# one ulp there (fp16 2e-3, bf16 1.6e-2) and a softmax weight by at most about that much.
W_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
EPS = 1e-6
SHAPES = [(8, 64, 2), (60, 96, 4), (64, 128, 8), (7, 80, 3)]  # (E, D, K)
# (softmax_first, renorm, scaling): OLMoE / Qwen3 / DeepSeek-V2-style scaling / Mixtral
MODES = [(True, False, 1.0), (True, True, 1.0), (True, False, 2.5), (True, True, 2.5),
         (False, True, 1.0)]


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _separated_case(T, E, D, dtype, with_residual, seed, gate=None, bump=False):
    """(x, residual, norm_weight, gate) whose logits are, per token, a shuffled grid 4/E apart
    (for `gate` if given: new activations for the same layer). bump: each token's top logit raised
    by b falling from 1.6 (token 0) towards 0, so that skipping at beta = 0.3 / 0.6 drops none,
    some or all of a token's other slots; |logits| stay < 4, within W_TOL's reasoning.

    Random inputs put near-ties among E logits rounded to half precision, where the kernel's and
    torch's summation orders may pick different experts and both be right. So the inputs are built
    backwards from target logits z: h = pinv(gate) z + a null-space component (for a dense,
    realistic h of rms ~1), then x = h / norm_weight at a random scale (RMSNorm undoes any scale).
    Roundings move each logit by ~1e-3, far below the 4/E >= 0.06 gaps: ids must match exactly.
    """
    gen = torch.Generator().manual_seed(seed)
    if gate is None:
        gate = (torch.randn(E, D, generator=gen, dtype=torch.float64) * 2 / D ** 0.5).to(dtype)
    g = gate.double().cpu()
    pinv = torch.linalg.pinv(g)  # [D, E]; D >= E, so g @ pinv = I
    z = torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).double() * (4.0 / E) - 2.0
    if bump:
        b = 1.6 * (1 - torch.arange(T, dtype=torch.float64) / T) ** 2  # [T]: 1.6 for token 0, then down to ~0
        z = z.scatter_add(1, z.argmax(-1, keepdim=True), b[:, None])  # [T, E]: the top moves further up
    hz = z @ pinv.T  # [T, D], g @ hz = z
    r = torch.randn(T, D, generator=gen, dtype=torch.float64)
    null = r - (r @ g.T) @ pinv.T  # orthogonal to the gate's rows: leaves the logits alone
    rms = lambda v: v.pow(2).mean(-1, keepdim=True).sqrt()  # noqa: E731
    null = null / rms(null) * (1.0 - rms(hz).clamp(max=0.8) ** 2).sqrt()
    norm_w = 1.0 + 0.2 * torch.rand(D, generator=gen, dtype=torch.float64)
    s = (hz + null) / norm_w * (0.5 + 3 * torch.rand(T, 1, generator=gen, dtype=torch.float64))
    res = torch.randn(T, D, generator=gen, dtype=torch.float64) if with_residual else None
    x = s - res if with_residual else s
    move = lambda v: None if v is None else v.to(dtype).to(DEVICE)  # noqa: E731
    return move(x), move(res), move(norm_w), gate.to(DEVICE)


def _check(out, ref, gate, k, kw, dtype):
    (h, res_out, w, ids), (h_ref, res_ref, w_ref, ids_ref) = out, ref
    assert torch.equal(res_out, res_ref), "x + residual must round exactly as torch's add does"
    assert h.dtype == h_ref.dtype and h.shape == h_ref.shape
    assert _rel_err(h, h_ref) <= H_TOL[dtype]
    if dtype != torch.float32:
        assert (h != h_ref).float().mean().item() <= MAX_FLIPS, "a rounding step is not replicated"
    assert w.dtype == torch.float32 and ids.dtype == torch.int64 and w.shape == ids.shape == ids_ref.shape
    assert torch.equal(ids, ids_ref), "separated logits: the same experts in the same slots"
    assert _rel_err(w, w_ref) <= W_TOL[dtype]
    # The logits' rounding to the activations' dtype is within W_TOL, so check it apart: fed the
    # kernel's own h, the engine's gate + router must give the kernel's weights to fp32 precision,
    # but for the rare token where a different fp32 summation order rounds one of its logits the
    # other way. Dropping the rounding moves every token's weights by ~1e-3 in fp16.
    w_chain, _ = route_topk_ref(F.linear(h.reshape(-1, h.shape[-1]), gate), k, **kw)
    off = ((w - w_chain).abs().amax(-1) > 1e-5 * w_chain.abs().max()).sum().item()
    assert off <= max(1, w.shape[0] // 20), f"{off} of {w.shape[0]} tokens: logits not rounded as torch's"


# Every (shape, T, residual) for T = 1 and 3, and a batch of 64 on the two cheapest shapes (64
# programs cost seconds under the interpreter), once per dtype; the routing mode rotates through
# them, so each mode meets several shapes without paying for the whole product.
_COMBOS = [*itertools.product(SHAPES, [1, 3], [True, False]),
           (SHAPES[0], 64, True), (SHAPES[3], 64, False)]
CASES = [(*shape, T, res, MODES[i % len(MODES)]) for i, (shape, T, res) in enumerate(_COMBOS)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,D,K,T,with_residual,mode", CASES)
def test_norm_route(E, D, K, T, with_residual, mode, dtype):
    softmax_first, renorm, scaling = mode
    x, res, norm_w, gate = _separated_case(T, E, D, dtype, with_residual, seed=E * D + T)
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    out = norm_route(x, res, norm_w, gate, EPS, K, **kw)
    _check(out, norm_route_ref(x, res, norm_w, gate, EPS, K, **kw), gate, K, kw, dtype)
    if not with_residual:
        assert out[1] is x, "without a residual the stream is x itself, as add_forward returns it"


@pytest.mark.parametrize("softmax_first,renorm,scaling", MODES)
def test_all_equal_gate_rows_tie_to_lowest_index(softmax_first, renorm, scaling):
    """Identical gate rows give E exactly equal logits: the K lowest experts win, in index order,
    with the weights of a uniform softmax. torch.topk's tie order is unspecified, so the oracle's
    ids are not compared here, only the rule."""
    E, D, K, T = 60, 96, 4, 3
    x, res, norm_w, gate = _separated_case(T, E, D, torch.float32, True, seed=1)
    gate = gate[:1].expand(E, D).contiguous()
    h, _, w, ids = norm_route(x, res, norm_w, gate, EPS, K, renorm=renorm, scaling=scaling,
                              softmax_first=softmax_first)
    assert ids.tolist() == [list(range(K))] * T
    share = 1.0 / (E if softmax_first and not renorm else K)
    assert torch.allclose(w, torch.full_like(w, share * scaling), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_gate_rows_tie_at_the_cut(dtype):
    """Experts e and e + E/2 share a gate row, so every logit comes in an exact pair. With K odd
    the K-th pick is half a pair: the lower index must win it. Slots: pairs in descending order,
    each pair lowest index first. The expected ids come from the oracle's logits of the first
    half, which are well separated, so the ranking itself is unambiguous."""
    E, D, K, T = 16, 64, 3, 5
    x, res, norm_w, gate = _separated_case(T, E // 2, D, dtype, True, seed=2)
    gate = torch.cat([gate, gate])
    _, _, w, ids = norm_route(x, res, norm_w, gate, EPS, K, renorm=True)
    h_ref, _, w_ref, _ = norm_route_ref(x, res, norm_w, gate, EPS, K, renorm=True)
    best = F.linear(h_ref, gate[: E // 2]).float().argsort(-1, descending=True)
    pairs = torch.stack([best, best + E // 2], dim=-1).flatten(1)  # [T, E]: b0, b0+E/2, b1, ...
    assert torch.equal(ids, pairs[:, :K])
    assert _rel_err(w, w_ref) <= W_TOL[dtype]  # tied weights are equal, whichever twin is chosen


def test_usable():
    bf16 = torch.bfloat16
    assert usable(8, 4096, True, bf16, bf16)                   # Mixtral: a 64 KB gate
    assert not usable(64, 2048, True, bf16, bf16)              # OLMoE: 256 KB, slower in one program
    assert usable(16, 2048, True, bf16, bf16)
    assert not usable(8, 2048, True, torch.float32, bf16)      # DeepSeek's fp32 gate
    assert not usable(8, 2048, False, bf16, bf16)              # not a softmax/top-k router, or a selection bias
    assert not usable(1024, 2048, True, bf16, bf16)            # E > 512


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("E,D,K,T,mode", [(8, 64, 2, 1, MODES[0]), (60, 96, 4, 3, MODES[-1]), (16, 128, 3, 5, MODES[1])])
def test_gate_route_is_norm_route_without_the_norm(E, D, K, T, mode, dtype):
    """The engine's op (ops.py): gate GEMV + top-k on an already-normed h, against its PyTorch twin."""
    softmax_first, renorm, scaling = mode
    h, _, _, gate = _separated_case(T, E, D, dtype, False, seed=E + T)
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    w, ids = gate_route(h, gate, K, **kw)
    w_ref, ids_ref = gate_route_torch(h, gate, K, **kw)
    assert torch.equal(ids, ids_ref)
    assert _rel_err(w, w_ref) <= W_TOL[dtype]


# (E, D, K, T, mode): one token of top-4 of 60; top-8 of 64 renormalised and scaled; Mixtral's top-2 of 8
SKIP_CASES = [(60, 96, 4, 1, MODES[0]), (64, 128, 8, 3, MODES[3]), (8, 64, 2, 5, MODES[4])]


def _check_skip(out, unskipped, ref, skip, dtype):
    """(w, ids) with skip against the same kernel's skip-0 result and the twin's skipped one."""
    (w, ids), (w0, ids0), (w_ref, ids_ref) = out, unskipped, ref
    w_s, ids_s = skip_small(w0, ids0, skip)
    assert torch.equal(w, w_s) and torch.equal(ids, ids_s), "not skip_small of the unskipped result"
    assert torch.equal(ids, ids_ref), "the twin keeps the same experts in the same slots"
    assert _rel_err(w, w_ref) <= W_TOL[dtype]
    assert torch.equal(ids < 0, w == 0) and (ids[:, 0] >= 0).all(), "the top slot is always kept"
    if skip == 0.0:
        assert torch.equal(w, w0) and torch.equal(ids, ids0) and (ids >= 0).all()
    else:
        assert (ids < 0).any(), "token 0's other slots are all below beta x its top weight"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("skip", [0.0, 0.3, 0.6])
@pytest.mark.parametrize("E,D,K,T,mode", SKIP_CASES)
def test_skip_in_the_epilogue(E, D, K, T, mode, skip, dtype):
    """Dynamic skipping in both launchers (norm_route; gate_route, the engine's op) is `skip_small` on
    the kernel's own unskipped result, bit for bit, and drops exactly the twin's slots (the weights
    match the twin's to W_TOL, as unskipped: the logits' summation order differs)."""
    softmax_first, renorm, scaling = mode
    x, res, norm_w, gate = _separated_case(T, E, D, dtype, True, seed=E + K, bump=True)
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    h, _, w0, ids0 = norm_route(x, res, norm_w, gate, EPS, K, **kw)              # skip's default: off
    out = norm_route(x, res, norm_w, gate, EPS, K, **kw, skip=skip)[2:]
    ref = norm_route_ref(x, res, norm_w, gate, EPS, K, **kw, skip=skip)[2:]
    _check_skip(out, (w0, ids0), ref, skip, dtype)
    out = gate_route(h, gate, K, **kw, skip=skip)
    _check_skip(out, gate_route(h, gate, K, **kw), gate_route_torch(h, gate, K, **kw, skip=skip), skip, dtype)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_capture_in_cuda_graph():
    """Replays from a CUDA graph with fresh inputs copied in: no host sync inside."""
    dtype = torch.bfloat16
    x, res, norm_w, gate = _separated_case(4, 64, 2048, dtype, True, seed=3)
    kw = dict(renorm=False, scaling=1.0)
    norm_route(x, res, norm_w, gate, EPS, 8, **kw)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = norm_route(x, res, norm_w, gate, EPS, 8, **kw)
    for buf, new in zip((x, res, norm_w), _separated_case(4, 64, 2048, dtype, True, seed=4, gate=gate)):
        buf.copy_(new)
    graph.replay()
    _check(out, norm_route_ref(x, res, norm_w, gate, EPS, 8, **kw), gate, 8, kw, dtype)
