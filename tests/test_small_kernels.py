"""Guards the small decode kernels (RMSNorm+add, q/k norm+rope+cache write, router top-k) vs torch."""

import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels.rmsnorm import rms_norm  # noqa: E402
from minimoe.kernels.rope import qkv_rope_cache  # noqa: E402
from minimoe.kernels.route import route_topk  # noqa: E402
from minimoe.ops import qkv_rope_cache_torch as qkv_rope_cache_ref  # noqa: E402  (the PyTorch twins)
from minimoe.ops import rms_norm_torch as rms_norm_ref  # noqa: E402
from minimoe.ops import route_topk_torch as route_topk_ref  # noqa: E402
from minimoe.router import skip_small  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# max|err| / max|ref|. Half precision: every rounding of the torch path is replicated, so the only
# differences are 1-ulp flips where a different summation order (or an FMA) moves an fp32
# intermediate across a rounding boundary (1 ulp of fp16 is ~1e-3 of the largest value, of bf16
# ~8e-3). A missed intermediate rounding also stays within 1 ulp but flips ~25% of the values, so
# half results must also be bit-identical almost everywhere (seen on the CPU: 1 in 10^5 differs).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
MAX_FLIPS = 0.01  # share of half-precision values allowed to differ from the oracle at all
# the interpreter has no bfloat16; on a GPU run the real kernels cover it too
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _assert_close(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, ref.shape, out.dtype, ref.dtype)
    err = _rel_err(out, ref)
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"
    if dtype != torch.float32:
        flips = (out != ref).float().mean().item()
        assert flips <= MAX_FLIPS, f"{flips:.1%} of values differ: a rounding step is not replicated"


# ---- RMSNorm (+ residual add) --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("N", [24, 64, 2048, 2000])
def test_rms_norm(N, with_residual, dtype):
    torch.manual_seed(N)
    x = torch.randn(2, 3, N, device=DEVICE, dtype=dtype)  # leading dims are flattened to rows
    w = (1.0 + 0.2 * torch.randn(N, device=DEVICE)).to(dtype)
    res = torch.randn_like(x) if with_residual else None
    out, res_out = rms_norm(x, w, 1e-6, res)
    ref, res_ref = rms_norm_ref(x, w, 1e-6, res)
    _assert_close(out, ref, dtype)
    if with_residual:
        assert torch.equal(res_out, res_ref), "x + residual must round exactly as torch does"
    else:
        assert res_out is None


def test_rms_norm_promotes_like_torch():
    """An fp32 weight on fp16 activations gives an fp32 output, as torch's `weight * normed` does."""
    x = torch.randn(3, 64, device=DEVICE, dtype=torch.float16)
    w = 1.0 + 0.2 * torch.randn(64, device=DEVICE)
    _assert_close(rms_norm(x, w, 1e-5)[0], rms_norm_ref(x, w, 1e-5)[0], torch.float32)


# ---- q/k norm + rope + cache write -------------------------------------------------------------


def _rope_case(B, S, H, Hkv, d, qk_norm, dtype, seed, clip=None):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=gen)).to(DEVICE)

    P, s_max = 32, 16
    qkv = rnd(B, S, (H + 2 * Hkv) * d, scale=2.0, shift=0.3).to(dtype)  # shifted: norms matter
    angles = rnd(P, d // 2, scale=3.0)
    cos, sin = angles.cos(), angles.sin()
    start = torch.tensor([[7], [3 + S]], device=DEVICE) if B == 2 else torch.full((B, 1), 7, device=DEVICE)
    positions = start + torch.arange(S, device=DEVICE)  # [B, S]: a decode step at 7, not from 0
    widths = {"full": (H * d, Hkv * d), "head": (d, d)}.get(qk_norm)
    q_w = k_w = None
    if widths:
        q_w, k_w = ((1.0 + 0.2 * rnd(n)).to(dtype) for n in widths)
    # the engine passes a layer's slice of [L, B, S_max, Hkv, d]; k is made head-major to cover strides
    k_cache = torch.full((B, Hkv, s_max, d), float("nan"), device=DEVICE, dtype=dtype).transpose(1, 2)
    v_cache = torch.full((2, B, s_max, Hkv, d), float("nan"), device=DEVICE, dtype=dtype)[1]
    kw = dict(qk_norm=qk_norm, q_norm_w=q_w, k_norm_w=k_w, eps=1e-6, clip_qkv=clip)
    return (qkv, positions, cos, sin, k_cache, v_cache, H, Hkv, d), kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S", [1, 5])
@pytest.mark.parametrize("d", [16, 32])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("qk_norm", [None, "full", "head"])
def test_qkv_rope_cache(qk_norm, interleave, H, Hkv, d, S, dtype):
    _check_qkv_rope_cache(2, S, H, Hkv, d, qk_norm, interleave, dtype, seed=H * d + S)


@pytest.mark.parametrize("qk_norm,clip", [("head", None), ("full", 0.3)])
def test_qkv_rope_cache_odd_half_and_clip(qk_norm, clip):
    """d = 24 (qwen3-moe-tiny): d/2 = 12 is padded to a 16-wide masked tile; OLMoE's clip_qkv."""
    for dtype in DTYPES:
        _check_qkv_rope_cache(2, 3, 4, 2, 24, qk_norm, False, dtype, seed=24, clip=clip)


@pytest.mark.parametrize("q_programs", [1, 3, 64])
@pytest.mark.parametrize("H,Hkv,d", [(6, 2, 32), (8, 1, 24)])
@pytest.mark.parametrize("qk_norm,clip,full_split", [(None, None, False), ("head", None, False), ("full", 0.3, False),
                                                     ("full", 0.3, True)])
def test_qkv_rope_cache_split(monkeypatch, qk_norm, clip, H, Hkv, d, q_programs, full_split):
    """Q_PROGRAMS (a token's q heads over programs, k / v in one more; the default is 8): 3 programs for 6 or 8 heads
    leave a ragged last group, 64 more programs than heads; "full" keeps one q program unless FULL_SPLIT (each q
    program then sums over the whole q row itself). Same oracle, one token and five."""
    import minimoe.kernels.rope as rope
    monkeypatch.setattr(rope, "Q_PROGRAMS", q_programs)
    monkeypatch.setattr(rope, "FULL_SPLIT", full_split)
    for S, interleave in ((1, False), (5, True)):
        _check_qkv_rope_cache(2, S, H, Hkv, d, qk_norm, interleave, torch.float16, seed=H + S + q_programs, clip=clip)
    if full_split:   # Σ q² over the same [H, d/2] tile as one q program's: the same bits
        args, kw = _rope_case(2, 3, H, Hkv, d, qk_norm, torch.float16, 7, clip)
        split = qkv_rope_cache(*args, **kw)
        monkeypatch.setattr(rope, "Q_PROGRAMS", 1)
        assert torch.equal(split, qkv_rope_cache(*args, **kw))


@pytest.mark.parametrize("S", [1, 5])
@pytest.mark.parametrize("qk_norm,clip,interleave", [(None, None, True), ("head", None, False), ("full", 0.3, False)])
def test_qkv_rope_cache_step_rows(qk_norm, clip, interleave, S):
    """`rows` (minimoe.rope.STEP_ROWS): this step's cos / sin rows [B·S, d/2] gathered beforehand, read by token
    instead of at the position: the same q bits and cache bytes as the tables, in the kernel and in the twin."""
    from minimoe.ops import qkv_rope_cache_torch
    for fn in (qkv_rope_cache, qkv_rope_cache_torch):
        args, kw = _rope_case(2, S, 4, 2, 32, qk_norm, torch.float16, 11 + S, clip)
        qkv, positions, cos, sin, k_cache, v_cache = args[:6]
        k_rows, v_rows = k_cache.clone(), v_cache.clone()
        q = fn(*args, interleave=interleave, **kw)
        rows = torch.cat([cos, sin], -1)[positions.reshape(-1)]                 # [B·S, d]: as model.forward does
        q_rows = fn(qkv, positions, rows[:, :16], rows[:, 16:], k_rows, v_rows, *args[6:], interleave=interleave,
                    rows=True, **kw)
        assert torch.equal(q, q_rows)
        assert torch.equal(k_cache.nan_to_num(5.0), k_rows.nan_to_num(5.0))
        assert torch.equal(v_cache.nan_to_num(5.0), v_rows.nan_to_num(5.0))


def _check_qkv_rope_cache(B, S, H, Hkv, d, qk_norm, interleave, dtype, seed, clip=None):
    args, kw = _rope_case(B, S, H, Hkv, d, qk_norm, dtype, seed, clip)
    qkv, positions, cos, sin, k_cache, v_cache = args[:6]
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = qkv_rope_cache(*args, interleave=interleave, **kw)
    q_ref = qkv_rope_cache_ref(qkv, positions, cos, sin, k_ref, v_ref, H, Hkv, d,
                               interleave=interleave, **kw)
    _assert_close(q, q_ref, dtype)
    assert q.is_contiguous()
    written = torch.zeros(k_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    written[torch.arange(B, device=DEVICE)[:, None], positions] = True
    for cache, ref in ((k_cache, k_ref), (v_cache, v_ref)):
        assert cache[~written].isnan().all(), "a cache row outside this step's positions was written"
        assert not cache[written].isnan().any(), "a target cache row was left unwritten"
        _assert_close(cache[written], ref[written], dtype)


# ---- router top-k ---------------------------------------------------------------------------------


def _distinct_logits(T, E, dtype, seed):
    """Per row a shuffled grid of distinct values, 4/E apart: no ties in any dtype, nor after exp."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(E, generator=gen) for _ in range(T)]).float()
    scale = 0.5 + torch.rand(T, 1, generator=gen)
    return (perm * (4.0 / E) - 2.0 + torch.randn(T, 1, generator=gen)).mul(scale).to(dtype).to(DEVICE)


def _by_id(w, ids):
    order = ids.argsort(dim=-1)
    return w.gather(1, order), ids.gather(1, order)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("softmax_first", [True, False])
@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("K", [1, 2, 8])
@pytest.mark.parametrize("E", [8, 60, 64, 128])
def test_route_topk(E, K, renorm, softmax_first, dtype):
    logits = _distinct_logits(7, E, dtype, seed=E * 10 + K)
    kw = dict(renorm=renorm, scaling=2.5, softmax_first=softmax_first)
    w, ids = route_topk(logits, K, **kw)
    w_ref, ids_ref = route_topk_ref(logits, K, **kw)
    assert w.dtype == torch.float32 and ids.dtype == torch.int64 and w.shape == ids.shape == (7, K)
    assert (w[:, :-1] >= w[:, 1:]).all(), "slots must come in descending weight, as torch.topk's"
    (w, ids), (w_ref, ids_ref) = _by_id(w, ids), _by_id(w_ref, ids_ref)
    assert torch.equal(ids, ids_ref)
    assert _rel_err(w, w_ref) <= 1e-5  # scoring is float32 whatever the logits' dtype


def test_route_topk_ties_and_masked_experts():
    """Equal logits go to the lowest index; -inf (masked) experts still give K distinct ids."""
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0],
                           [float("-inf"), 2.0, float("-inf"), float("-inf"), float("-inf")]],
                          device=DEVICE)
    w, ids = route_topk(logits, 3, renorm=False)
    assert ids.tolist() == [[1, 2, 4], [1, 0, 2]]
    assert w[1, 1:].eq(0).all() and w[1, 0].item() == pytest.approx(1.0)


# (T, E, K, softmax_first, renorm, scaling): one token of a Qwen2-MoE-like top-4 of 60; OLMoE-like
# top-8 of 64, renormalised and scaled; Mixtral's top-2 of 8 with the softmax after the top-k
SKIP_CASES = [(1, 60, 4, True, False, 1.0), (7, 64, 8, True, True, 2.5), (9, 8, 2, False, True, 1.0)]


def _bumped_logits(T, E, dtype, seed):
    """`_distinct_logits` with each token's top logit raised by b, from 1.6 (token 0) down towards 0:
    a top-to-slot-j weight ratio of e^-(b + gap), so beta = 0.3 / 0.6 drop none, some or all of a
    token's other slots. The grid's gaps stay, so there are still no ties."""
    logits = _distinct_logits(T, E, torch.float32, seed).cpu()
    b = 1.6 * (1 - torch.arange(T) / T) ** 2                                             # [T]
    top = logits.argmax(-1, keepdim=True)                                                # [T, 1]
    return logits.scatter_add(1, top, b[:, None]).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("skip", [0.0, 0.3, 0.6])
@pytest.mark.parametrize("T,E,K,softmax_first,renorm,scaling", SKIP_CASES)
def test_route_topk_skip(T, E, K, softmax_first, renorm, scaling, skip, dtype):
    """Dynamic skipping in the kernel's epilogue is `skip_small` on its own final weights, bit for bit,
    and drops exactly the twin's slots. The unskipped weights already differ from torch's by an fp32
    ulp (exp, summation order), so against the twin the weights get the test's usual tolerance."""
    logits = _bumped_logits(T, E, dtype, seed=E + K)
    kw = dict(renorm=renorm, scaling=scaling, softmax_first=softmax_first)
    w0, ids0 = route_topk(logits, K, **kw)                       # skip's default: off
    w, ids = route_topk(logits, K, **kw, skip=skip)
    w_ref, ids_ref = route_topk_ref(logits, K, **kw, skip=skip)
    w_s, ids_s = skip_small(w0, ids0, skip)
    assert torch.equal(w, w_s) and torch.equal(ids, ids_s), "not skip_small of the unskipped result"
    assert torch.equal(ids, ids_ref), "the twin keeps the same experts in the same slots"
    assert _rel_err(w, w_ref) <= 1e-5
    assert torch.equal(ids < 0, w == 0) and (ids[:, 0] >= 0).all(), "the top slot is always kept"
    if skip == 0.0:
        assert torch.equal(w, w0) and torch.equal(ids, ids0) and (ids >= 0).all()
    else:
        assert (ids < 0).any(), "token 0's other slots are all below beta x its top weight"


# ---- GPU only: CUDA graph capture ------------------------------------------------------------


@needs_cuda
def test_capture_in_cuda_graph():
    """All three kernels replay from a graph with fresh inputs copied in: no host syncs inside."""
    dtype = torch.bfloat16
    x, res = (torch.randn(4, 2048, device=DEVICE, dtype=dtype) for _ in range(2))
    w = torch.randn(2048, device=DEVICE, dtype=dtype)
    logits = torch.randn(4, 60, device=DEVICE)
    args, kw = _rope_case(2, 1, 4, 2, 32, "head", dtype, seed=0)

    def run():
        return (rms_norm(x, w, 1e-6, res), route_topk(logits, 4, renorm=True, scaling=2.5),
                qkv_rope_cache(*args, **kw))
    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        (out, res_out), (rw, rids), q = run()
    for t in (x, res, logits, args[0]):
        t.copy_(torch.randn_like(t))
    args[1].add_(3)  # positions move on, as they do from one decode step to the next
    k_ref, v_ref = args[4].clone(), args[5].clone()  # holds the eager warm-up's rows already
    graph.replay()
    _assert_close(out, rms_norm_ref(x, w, 1e-6, res)[0], dtype)
    assert torch.equal(res_out, x + res)
    w_ref, ids_ref = route_topk_ref(logits, 4, renorm=True, scaling=2.5)
    assert torch.equal(_by_id(rw, rids)[1], _by_id(w_ref, ids_ref)[1])
    q_ref = qkv_rope_cache_ref(*args[:4], k_ref, v_ref, *args[6:], **kw)
    _assert_close(q, q_ref, dtype)
    for cache, ref in ((args[4], k_ref), (args[5], v_ref)):  # NaN = never written, in both
        _assert_close(cache.nan_to_num(0.0), ref.nan_to_num(0.0), dtype)


# ---- SwiGLU activation ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 2816), (3, 5, 2 * 24), (7, 2 * 1500), (0, 8)])
def test_silu_mul_matches_torch(shape, dtype):
    """One row, a batch of rows, a width that is not a multiple of the block, no rows."""
    from minimoe.kernels.silu_mul import silu_mul
    from minimoe.ops import silu_mul_torch
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 4).to(dtype).to(DEVICE)
    out, ref = silu_mul(x), silu_mul_torch(x)
    assert out.shape == ref.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    if out.numel():
        _assert_close(out, ref, dtype)
