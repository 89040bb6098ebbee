"""Guards the decode GEMV (and its fused residual-add + RMSNorm prologue) against RMSNorm + F.linear."""

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from minimoe.kernels.gemv import MAX_T, default_config, gemv, usable  # noqa: E402
from minimoe.kernels.rmsnorm import rms_norm  # noqa: E402
from minimoe.ops import rms_norm_torch  # noqa: E402


def gemv_ref(x, weight, bias=None, *, norm_weight=None, residual=None, eps=1e-6, config=None):
    """The oracle: the engine's PyTorch RMSNorm (+ add), then F.linear. `config` is ignored."""
    res_out = None
    if norm_weight is not None:
        x, s = rms_norm_torch(x, norm_weight, eps, residual)
        res_out = s if residual is not None else None
    return F.linear(x, weight, bias), res_out

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# max|err| / max|ref|. The GEMV sums D products in another order than the reference's matmul (and
# its normed input may differ from rms_norm's by a 1-ulp flip where mean(s²) lands on a rounding
# boundary), so y agrees to a few ulps of the output dtype, not bit for bit: fp16's ulp is ~1e-3
# of the largest value, bf16's ~8e-3. x + residual is one rounding of an exact sum: bit-equal.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
# (N, D): tiny; D = 80 not a multiple of BLOCK_K; N = 200 not a multiple of BLOCK_N; OLMoE's
# q/k/v projection scaled down 16x
SHAPES = [(48, 64), (96, 80), (200, 128), (6144 // 16, 2048 // 16)]
# (norm, residual): plain GEMV, norm then GEMV, add + norm then GEMV
PROLOGUES = [(False, False), (True, False), (True, True)]
needs_cuda = pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")


def _inputs(T, N, D, dtype, bias, norm, residual, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=g)).to(DEVICE, dtype)
    return dict(x=rand(T, D), weight=rand(N, D, scale=D ** -0.5), bias=rand(N) if bias else None,
                norm_weight=rand(D, scale=0.2, shift=1.0) if norm else None,
                residual=rand(T, D) if residual else None)


def _check(args, dtype, config=None):
    y, res_out = gemv(**args, config=config)
    y_ref, res_ref = gemv_ref(**args)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype, (y.shape, y_ref.shape, y.dtype)
    err = ((y.double() - y_ref.double()).abs().max() / y_ref.double().abs().max()).item()
    assert err <= TOL[dtype], f"relative error {err:.2e} > {TOL[dtype]:.0e}"
    if args["residual"] is None:
        assert res_out is None
    else:
        assert torch.equal(res_out, args["x"] + args["residual"]), "x + residual must round as torch's"
        assert torch.equal(res_out, res_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 2, 3, 16])
@pytest.mark.parametrize("N,D", SHAPES)
def test_gemv_matches_reference(N, D, T, dtype):
    # The interpreter runs programs one after another, so on the CPU the two wider shapes take
    # BLOCK_N = 32 (7 and 12 programs, not 25 and 48); the rest of the default config still holds.
    config = {"BLOCK_N": 32} if DEVICE.type == "cpu" and N >= 200 else None
    for i, (bias, (norm, residual)) in enumerate((b, p) for b in (False, True) for p in PROLOGUES):
        _check(_inputs(T, N, D, dtype, bias, norm, residual, seed=1000 * T + N + i), dtype, config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 3, 16])
def test_normed_input_rounds_like_rms_norm(T, dtype):
    """With W = I the GEMV returns its input h exactly (one product by 1, the rest by 0), so h can
    be held to the rms_norm kernel's: equal except rare 1-ulp flips where the two kernels' sums of
    s² differ in their last bit. A skipped rounding step would flip ~25% of the values."""
    D = 96
    args = _inputs(T, D, D, dtype, False, True, True, seed=11)
    args["weight"] = torch.eye(D, device=DEVICE, dtype=dtype)
    y, _ = gemv(**args, config={"BLOCK_N": 32, "BLOCK_K": 32})  # 3 chunks of the main loop
    h, _ = rms_norm(args["x"], args["norm_weight"], 1e-6, args["residual"])
    assert (y != h).float().mean().item() <= 0.01, "a rounding step of rms_norm is not replicated"
    assert ((y.double() - h.double()).abs().max() / h.double().abs().max()).item() <= TOL[dtype]


@pytest.mark.parametrize("config", [
    {"BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2, "dot": False},  # 200 % 32 != 0
    {"BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 2, "num_stages": 3, "dot": False},  # D = 80: 2 chunks
    {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3, "dot": True},   # T padded to 16
    {"BLOCK_N": 128, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1},               # one program
])
@pytest.mark.parametrize("T", [1, 3])
def test_config_override(T, config):
    """Any tiling works, including BLOCK_N not dividing N and tl.dot for a 3-row batch."""
    for norm, residual in PROLOGUES:
        _check(_inputs(T, 200, 80, torch.float32, True, norm, residual, seed=T), torch.float32, config)


@pytest.mark.parametrize("n_out", [16, 48])
def test_residual_written_once_across_programs(n_out):
    """D = 1040 at T = 16 takes 3 chunks of the norm pass: written by 1 program, then by 3."""
    args = _inputs(16, n_out, 1040, torch.float32, False, True, True, seed=7)
    _check(args, torch.float32, {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2})


def test_default_config_is_the_measured_one():
    for N, D in [(6144, 2048), (2048, 2048), (50304, 2048), (4096, 4096), (2048, 4096), (96, 80)]:
        for T in (1, 4, 16):
            cfg = default_config(T, N, D, sms=132)
            assert cfg["dot"] and cfg["BLOCK_N"] >= 16, cfg               # tl.dot needs 16-wide tiles
            assert cfg["BLOCK_K"] <= max(triton.next_power_of_2(D), 16), (N, D, T, cfg)
    assert default_config(1, 6144, 2048)["BLOCK_N"] == 32 and default_config(1, 50304, 2048)["BLOCK_N"] == 64


def test_usable_and_empty_batch():
    w = torch.zeros(32, 64, device=DEVICE)
    assert usable(1, w) and usable(MAX_T, w)
    assert not usable(MAX_T + 1, w) and not usable(0, w) and not usable(1, w.t())
    assert not usable(1, w.to(torch.int8))
    y, res_out = gemv(torch.zeros(0, 64, device=DEVICE), w)
    assert y.shape == (0, 32) and res_out is None


@needs_cuda
def test_gemv_in_cuda_graph():
    args = _inputs(4, 384, 2048, torch.bfloat16, True, True, True, seed=3)
    gemv(**args)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, res_out = gemv(**args)
    for _ in range(2):
        args["x"].copy_(torch.randn_like(args["x"]))
        graph.replay()
        y_ref, res_ref = gemv_ref(**args)
        assert torch.equal(res_out, res_ref)
        err = ((y.double() - y_ref.double()).abs().max() / y_ref.double().abs().max()).item()
        assert err <= TOL[torch.bfloat16], err


# ---- the stream kernel (the MoE decode down kernel as a dense GEMV) and `--gemv` dispatch -------------------

@pytest.mark.parametrize("T,N,D", [(1, 48, 64), (2, 17, 33), (1, 1, 1000), (2, 130, 520), (1, 64, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_gemv_matches_linear(T, N, D, dtype):
    """Ragged N and D (rows wrap, the reduction is masked), one output row, a one-element reduction."""
    from minimoe.kernels.dense_gemv import dense_gemv
    g = torch.Generator().manual_seed(T * 1000 + N + D)
    x = torch.randn(T, D, generator=g).to(DEVICE, dtype)
    w = (torch.randn(N, D, generator=g) * D ** -0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype)
    for cfg in (None, {"BLOCK_N": 4, "BLOCK_K": 16, "num_stages": 2}):
        for bias in (None, b):
            y = dense_gemv(x, w, config=cfg, bias=bias)
            ref = F.linear(x.float(), w.float(), None if bias is None else bias.float())
            assert y.dtype == dtype and y.shape == (T, N)
            assert ((y.float() - ref).abs().max() / ref.abs().max()).item() <= TOL[dtype]
    assert dense_gemv(x[:0], w).shape == (0, N)
    with pytest.raises(ValueError, match="bias"):
        dense_gemv(x, w, bias=b[:-1] if N > 1 else torch.zeros(2, device=DEVICE, dtype=dtype))


def test_dense_config_order_probe_table_rule(monkeypatch):
    """dense_config on a GPU: TILES (an in-step probe) over STEP_TILES[this GPU] over the rule, for that (N, D) only;
    another GPU's table is never read; the interpreter's tile ignores both."""
    from minimoe.kernels import dense_gemv as dg
    monkeypatch.setattr(dg, "on_gpu", lambda: True)
    monkeypatch.setattr(dg, "device_name", lambda: "TEST_GPU")
    rule = dg.dense_config(2048, 4096)
    assert rule == {"BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3}      # D >= 2N: long reduction
    monkeypatch.setitem(dg.STEP_TILES, "TEST_GPU", {(2048, 4096): {"BLOCK_N": 2, "num_warps": 1}})
    assert dg.dense_config(2048, 4096) == dict(rule, BLOCK_N=2, num_warps=1)
    assert dg.dense_config(4096, 2048) != dg.dense_config(2048, 4096)                    # keyed by (N, D), not the set
    assert dg.dense_config(2048, 2048) == {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 3}
    monkeypatch.setitem(dg.TILES, (2048, 4096), {"BLOCK_N": 8, "BLOCK_K": 512})
    assert dg.dense_config(2048, 4096) == {"BLOCK_N": 8, "BLOCK_K": 512, "num_warps": 4, "num_stages": 3}
    monkeypatch.setattr(dg, "device_name", lambda: "OTHER_GPU")
    monkeypatch.delitem(dg.TILES, (2048, 4096))
    assert dg.dense_config(2048, 4096) == rule
    monkeypatch.setattr(dg, "on_gpu", lambda: False)
    monkeypatch.setattr(dg, "device_name", lambda: "TEST_GPU")
    assert dg.dense_config(2048, 4096)["BLOCK_K"] == 32                                   # the interpreter's tile


def test_dense_gemv_refuses_inputs_it_would_misread():
    """A transposed weight, a strided x, another K or another dtype: one ValueError, not a wrong result (the kernel
    walks both along a unit-stride K of the weight's width)."""
    from minimoe.kernels.dense_gemv import dense_gemv
    x, w = torch.randn(1, 64, device=DEVICE), torch.randn(8, 64, device=DEVICE)
    for bad_x, bad_w in ((x, torch.randn(64, 8, device=DEVICE).t()), (torch.randn(1, 128, device=DEVICE)[:, ::2], w),
                         (torch.randn(1, 80, device=DEVICE), w), (x.half(), w), (x[0], w)):
        with pytest.raises(ValueError, match="same K, dtype and device"):
            dense_gemv(bad_x, bad_w)


def test_dense_gemv_prefetch_needs_pdl_on_a_gpu():
    """The L2-prefetch prologue runs only on a PDL launch on a GPU, with 16-byte aligned rows: else one error."""
    from minimoe.kernels.dense_gemv import dense_gemv
    x, w = torch.randn(1, 64, device=DEVICE), torch.randn(8, 64, device=DEVICE)
    with pytest.raises(ValueError, match="prefetch_bytes needs pdl=True"):
        dense_gemv(x, w, prefetch_bytes=1024)                       # no PDL (and, here, no GPU)
    with pytest.raises(ValueError, match="16-byte aligned"):
        dense_gemv(x, torch.randn(8, 65, device=DEVICE)[:, :64], pdl=True, prefetch_bytes=256)   # 260-byte rows


def test_linear_dispatches_on_the_gemv_setting(monkeypatch):
    """`--gemv stream` runs dense_gemv for 1-2 rows (a bias in its epilogue; F.linear past that), `triton` the
    gemv kernel, `auto` whatever auto_gemv names for the shape; every result equals F.linear."""
    from minimoe import linear as lin
    calls = []
    for name in ("_gemv", "_dense_gemv"):
        mod = getattr(lin, name)
        fn = mod.gemv if name == "_gemv" else mod

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls.append(_name)
            return _fn(*a, **k)
        if name == "_gemv":
            monkeypatch.setattr(mod, "gemv", wrapped)
        else:
            monkeypatch.setattr(lin, name, wrapped)
    w = torch.randn(24, 40, device=DEVICE)
    b = torch.randn(24, device=DEVICE)
    for mode, lead, bias, want in [("stream", (1, 1), None, "_dense_gemv"), ("stream", (2,), None, "_dense_gemv"),
                                   ("stream", (3,), None, None), ("stream", (1,), b, "_dense_gemv"),
                                   ("stream", (3,), b, None),
                                   ("triton", (2, 1), None, "_gemv"), ("torch", (1,), None, None)]:
        calls.clear()
        x = torch.randn(*lead, 40, device=DEVICE)
        y = lin.linear(x, w, bias, gemv=mode)
        assert torch.allclose(y, F.linear(x, w, bias), atol=1e-5), mode
        assert calls == ([want] if want else []), (mode, lead, calls)
    monkeypatch.setattr(lin, "auto_gemv", lambda T, N, D: "stream" if T == 1 else "torch")
    calls.clear()
    lin.linear(torch.randn(1, 40, device=DEVICE), w, gemv="auto")
    lin.linear(torch.randn(4, 40, device=DEVICE), w, gemv="auto")
    assert calls == ["_dense_gemv"]
    assert all(lin.auto_gemv(T, N, D) in lin.GEMV_KERNELS for T in (1, 2, 4, 16) for N, D in [(4096, 1024), (151936, 2048)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_float_out_is_the_float_of_the_rounded_output(dtype, monkeypatch):
    """An LM head's float32 logits: dense_gemv(out_dtype=float32) and Linear.forward_float give y.float()'s bits
    (the output rounded to x's dtype first) with the stream kernel at 1-2 rows, and the plain y.float() elsewhere:
    past its rows, under --gemv torch, and where a hook is registered (a tensor-parallel head)."""
    from minimoe import linear as lin
    from minimoe.kernels.dense_gemv import dense_gemv
    from minimoe.settings import RunSettings
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(70, 48, generator=g) * 0.2).to(DEVICE, dtype)
    b = torch.randn(70, generator=g).to(DEVICE, dtype)
    for T in (1, 2):
        x = torch.randn(T, 48, generator=g).to(DEVICE, dtype)
        for bias in (None, b):
            y = dense_gemv(x, w, bias=bias, out_dtype=torch.float32)
            assert y.dtype == torch.float32 and torch.equal(y, dense_gemv(x, w, bias=bias).float())
    calls = []
    real = lin._dense_gemv
    monkeypatch.setattr(lin, "_dense_gemv", lambda *a, **k: calls.append(k.get("out_dtype")) or real(*a, **k))
    head = lin.Linear(48, 70, settings=RunSettings(device=DEVICE, ops="triton", gemv="stream").resolve()).to(DEVICE)
    head.weight.data.copy_(w.float())
    head = head.to(dtype)
    for lead, want in [((1, 1), [torch.float32]), ((2, 1), [torch.float32]), ((3, 1), [])]:
        calls.clear()
        x = torch.randn(*lead, 48, generator=g).to(DEVICE, dtype)
        y = head.forward_float(x)
        assert y.dtype == torch.float32 and y.shape == (*lead, 70) and torch.equal(y, head(x).float())
        assert calls[:1] == want, (lead, calls)
    hook = head.register_forward_hook(lambda m, a, out: out * 2)                 # a hook sees the call and its output
    x = torch.randn(1, 1, 48, generator=g).to(DEVICE, dtype)
    calls.clear()
    assert torch.equal(head.forward_float(x), (head(x)).float()) and torch.float32 not in calls
    hook.remove()
    head.settings.gemv = "torch"
    calls.clear()
    assert torch.equal(head.forward_float(x), F.linear(x, head.weight).float()) and calls == []


def test_linear_pair_joins_two_layers_in_one_launch(monkeypatch):
    """MLA's q and latent projections: one dense_gemv launch with `second` at batch 1 under --gemv stream /
    auto, the two layers in turn otherwise (more tokens, a hook, torch); the same values either way."""
    from minimoe import linear as lin
    from minimoe.settings import RunSettings
    calls = []
    real = lin._dense_gemv
    monkeypatch.setattr(lin, "_dense_gemv", lambda *a, **k: calls.append(k.get("second") is not None) or real(*a, **k))
    s = RunSettings(gemv="stream")
    a, b = lin.Linear(40, 24, settings=s).to(DEVICE), lin.Linear(40, 7, settings=s).to(DEVICE)
    with torch.no_grad():
        a.weight.normal_(), b.weight.normal_()
    for lead, gemv, want in [((1, 1), "stream", [True]), ((1,), "auto", [True]), ((2,), "stream", [True]),
                             ((3,), "stream", []), ((1,), "torch", [])]:
        calls.clear()
        s.gemv = gemv
        x = torch.randn(*lead, 40, device=DEVICE)
        ya, yb = lin.linear_pair(x, a, b)
        assert ya.shape == (*lead, 24) and yb.shape == (*lead, 7)
        assert torch.allclose(ya, F.linear(x, a.weight), atol=1e-5) and torch.allclose(yb, F.linear(x, b.weight), atol=1e-5)
        assert calls == want, (lead, gemv, calls)
    s.gemv = "stream"
    hook = b.register_forward_hook(lambda *args: None)
    calls.clear()
    lin.linear_pair(torch.randn(1, 40, device=DEVICE), a, b)
    assert calls == [False, False]                                  # each layer alone, through its module
    hook.remove()
    with pytest.raises(ValueError, match="does not join"):
        real(torch.randn(1, 40, device=DEVICE), a.weight, second=torch.randn(3, 41, device=DEVICE))


def test_joined_pair_is_one_gemm_from_pair_join_min_t(monkeypatch):
    """join_pair_ moves two weights into one buffer (same values, Parameters as views of it); from PAIR_JOIN_MIN_T
    tokens linear_pair then runs ONE linear() over the joined weight, and the same values as the two layers in turn;
    a hook, a bias or separate buffers run the two layers; build_model joins MLA's q (or q_a) and latent weights."""
    from minimoe import linear as lin
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(gemv="torch")
    a, b = lin.Linear(40, 24, settings=s).to(DEVICE), lin.Linear(40, 7, settings=s).to(DEVICE)
    with torch.no_grad():
        a.weight.normal_(), b.weight.normal_()
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    assert lin.joined_weight(a.weight, b.weight) is None               # separate buffers
    assert lin.join_pair_(a, b)
    assert torch.equal(a.weight, wa) and torch.equal(b.weight, wb)
    assert torch.equal(lin.joined_weight(a.weight, b.weight), torch.cat([wa, wb]))
    assert lin.joined_weight(b.weight, a.weight) is None                # order matters
    shapes = []
    real = lin.linear
    monkeypatch.setattr(lin, "linear", lambda x, w, *r, **k: shapes.append(tuple(w.shape)) or real(x, w, *r, **k))
    for T, want in [(1, [(24, 40), (7, 40)]), (lin.PAIR_JOIN_MIN_T, [(31, 40)]), (37, [(31, 40)])]:
        shapes.clear()
        x = torch.randn(T, 40, device=DEVICE)
        ya, yb = lin.linear_pair(x, a, b)
        assert shapes == want, (T, shapes)
        assert torch.allclose(ya, F.linear(x, wa), atol=1e-5) and torch.allclose(yb, F.linear(x, wb), atol=1e-5)
    hook = a.register_forward_pre_hook(lambda *args: None)
    shapes.clear()
    lin.linear_pair(torch.randn(8, 40, device=DEVICE), a, b)
    assert shapes == [(24, 40), (7, 40)]
    hook.remove()
    c = lin.Linear(40, 5, bias=True, settings=s).to(DEVICE)
    assert not lin.join_pair_(a, c)                                     # a bias: not pairable
    for card in ["deepseek-v2-lite-tiny", "deepseek-v3-tiny"]:
        model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=RunSettings(
            device=DEVICE.type), seed=0)
        att = model.layers[0].attn
        q = att.wq_a if cfg.q_lora_rank else att.wq
        assert lin.joined_weight(q.weight, att.wkv_a.weight) is not None, card


@pytest.mark.parametrize("card,ops_kind,batch,prompt_len", [
    ("deepseek-v2-lite-tiny", "torch", 1, 4), ("deepseek-v3-tiny", "torch", 1, 4), ("qwen2-moe-tiny", "torch", 1, 4),
    ("deepseek-v2-lite-tiny", "triton", 2, 1), ("deepseek-v3-tiny", "triton", 1, 2)])
def test_stream_gemv_model_equals_cublas(card, ops_kind, batch, prompt_len, monkeypatch):
    """Decode at 1-2 tokens with every dense layer through the stream kernel (MLA's joined q + latent launch, whose
    strided views feed the torch or the Triton rope op; Qwen2's q/k/v bias in the epilogue) gives the tokens and
    logits of F.linear; a 1-2 token prompt sends the prefill through the joined launch too."""
    from conftest import greedy_and_logits
    from minimoe import linear as lin
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(experts="grouped", attn="sdpa", ops=ops_kind, gemv="torch", device=DEVICE)
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device=DEVICE, settings=s, seed=7)
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(8)).to(DEVICE)
    out, kinds = {}, set()
    real = lin._dense_gemv
    monkeypatch.setattr(lin, "_dense_gemv", lambda *a, **k: kinds.add(
        "joined" if k.get("second") is not None else "bias" if k.get("bias") is not None else "plain") or real(*a, **k))
    for gemv in ("torch", "stream"):
        s.gemv = gemv
        out[gemv] = greedy_and_logits(model, prompt, 4)
    assert ("joined" in kinds) == (cfg.attention == "mla") and ("bias" in kinds) == cfg.qkv_bias
    assert torch.equal(out["stream"][0], out["torch"][0])
    err = ((out["stream"][1] - out["torch"][1]).abs().max() / out["torch"][1].abs().max()).item()
    assert err <= 1e-5, err
