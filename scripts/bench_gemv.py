"""Time the decode GEMV (minimoe.kernels.gemv) against cuBLAS on real projection shapes.

    python scripts/bench_gemv.py --json gemv.json            # H200: ~1 min, bf16, every shape
    python scripts/bench_gemv.py --shapes olmoe_qkv --tokens 1
    TRITON_INTERPRET=1 python scripts/bench_gemv.py --check  # CPU: correctness only, fp32, tiny

For each shape (N outputs, D hidden) and T tokens: F.linear (cuBLAS), gemv with its default config
and a sweep of ~30 configs, then the fused prologue, gemv(norm_weight=, residual=), against the
unfused pair rms_norm kernel + F.linear. Each variant is timed as a CUDA graph of 20 back-to-back
calls (median of 20 replays, divided by 20), the way a decode step runs it. The 20 calls cycle
through enough copies of the weight to overflow L2, as the layers of a real step do: a weight read
from L2 would look faster than HBM allows. GB/s counts weight bytes only. Every config's output is
checked against gemv_ref before its time counts.

Compiles dominate: N and D are runtime arguments, so one compile per (config, BLOCK_T) serves
every shape, and worker processes compile the sweep in parallel first (Triton's disk cache).
"""

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first `import triton`
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minimoe.bench.roofline import graph_us  # noqa: E402
from minimoe.kernels.gemv import default_config, gemv  # noqa: E402
from minimoe.kernels.dense_gemv import dense_gemv  # noqa: E402
from minimoe.ops import rms_norm_torch  # noqa: E402
from minimoe.kernels.rmsnorm import rms_norm  # noqa: E402


def gemv_ref(x, weight, bias=None, *, norm_weight=None, residual=None, eps=1e-6):
    """The oracle: the engine's PyTorch RMSNorm (+ add), then F.linear."""
    res_out = None
    if norm_weight is not None:
        x, s = rms_norm_torch(x, norm_weight, eps, residual)
        res_out = s if residual is not None else None
    return torch.nn.functional.linear(x, weight, bias), res_out

SHAPES = {  # name: (N, D) of x[T, D] @ W[N, D]^T
    "olmoe_qkv": (6144, 2048), "olmoe_o": (2048, 2048), "olmoe_head": (50304, 2048),
    "mixtral_qkv": (6144, 4096), "mixtral_o": (4096, 4096), "mixtral_head": (32000, 4096),
    "qwen3_qkv": (5120, 2048), "qwen3_o": (2048, 4096),
    # the dense drafts of speculative decoding (Qwen3-0.6B, -1.7B): q/k/v, o, gate+up, down
    "q06_qkv": (4096, 1024), "q06_o": (1024, 2048), "q06_w13": (6144, 1024), "q06_w2": (1024, 3072),
    "q17_qkv": (4096, 2048), "q17_o": (2048, 2048), "q17_w13": (12288, 2048), "q17_w2": (2048, 6144),
}
TOKENS = (1, 4, 16)
CALLS = 20  # calls per graph, and replays per timing
HBM_BYTES_PER_S = 4.25e12  # measured H200 bandwidth: a result above it read from L2, not HBM
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}  # max|err| / max|ref|, as tests/test_gemv.py


def _cfg(bn, bk, warps, stages, dot=False):
    return {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages, "dot": dot}


# Tiles of 2K-16K weight elements (4-32 KB of bf16 per program step): each at 4 and 8 warps, the
# middle ones also at 2 and 4 pipeline stages, the small ones at 2 warps. 32 in all.
_TILES = [(8, 256), (8, 512), (16, 128), (16, 256), (16, 512), (32, 128), (32, 256), (32, 512),
          (64, 128), (64, 256)]
SWEEP = ([_cfg(bn, bk, w, 3) for bn, bk in _TILES for w in (4, 8)]
         + [_cfg(bn, bk, 4, s) for bn, bk in [(8, 512), (16, 256), (16, 512), (32, 256), (64, 128)]
            for s in (2, 4)]
         + [_cfg(8, 256, 2, 3), _cfg(16, 128, 2, 3)])
# tl.dot on T padded to 16 rows, for T < 16 too: tensor cores waste 15/16 of their work, which is
# free here, and the loads feeding a dot are the ones Triton's pipeliner is sure to multi-buffer
DOT_SWEEP = [_cfg(bn, bk, w, s, dot=True) for bn, bk, w, s in [
    (16, 128, 4, 4), (16, 256, 4, 3), (16, 256, 4, 4), (16, 512, 4, 3), (32, 128, 4, 4),
    (32, 256, 4, 3), (32, 256, 8, 3), (64, 128, 4, 4), (64, 256, 8, 3)]]


def candidates(T):
    """The sweep for T tokens: dot configs always (forced for T > 8); broadcast ones for T <= 8
    when BLOCK_T x tile stays <= 32K fp32 products (past that they only spill)."""
    block_t = triton.next_power_of_2(T)
    plain = [c for c in SWEEP if block_t == 1 or block_t * c["BLOCK_N"] * c["BLOCK_K"] <= 32768]
    return DOT_SWEEP if block_t >= 16 else plain + DOT_SWEEP


def time_graph(fns):
    """Median µs per call of fns, captured back to back in one CUDA graph."""
    return graph_us(fns, CALLS)


def make_case(N, D, T, dtype, device, seed=0):
    """Weights (enough copies to overflow L2 when cycled), x, residual, norm weight."""
    g = torch.Generator(device=device).manual_seed(seed)
    wbytes = N * D * torch.finfo(dtype).bits // 8
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    copies = max(1, min(CALLS, -(-4 * l2 // wbytes)))
    ws = [(torch.randn(N, D, device=device, generator=g) * D ** -0.5).to(dtype) for _ in range(copies)]
    x = torch.randn(T, D, device=device, generator=g).to(dtype)
    res = torch.randn(T, D, device=device, generator=g).to(dtype)
    nw = (1 + 0.2 * torch.randn(D, device=device, generator=g)).to(dtype)
    return dict(ws=ws, x=x, res=res, nw=nw, wbytes=wbytes)


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def checked(case, cfg, fused, dtype):
    """gemv's output for cfg, compared with gemv_ref; returns the error or raises."""
    kw = dict(norm_weight=case["nw"], residual=case["res"]) if fused else {}
    y, res_out = gemv(case["x"], case["ws"][0], **kw, config=cfg)
    y_ref, res_ref = gemv_ref(case["x"], case["ws"][0], **kw)
    err = rel_err(y, y_ref)
    if not err <= TOL[dtype] or (fused and not torch.equal(res_out, res_ref)):
        raise AssertionError(f"rel err {err:.1e} (residual equal: {fused and torch.equal(res_out, res_ref)})")
    return err


def time_gemv(case, cfg, fused, dtype):
    """µs per call, or None (printed) when cfg fails to compile or gives a wrong answer."""
    try:
        checked(case, cfg, fused, dtype)
        kw = dict(norm_weight=case["nw"], residual=case["res"]) if fused else {}
        ws = case["ws"]
        return time_graph([lambda w=ws[i % len(ws)]: gemv(case["x"], w, **kw, config=cfg)
                           for i in range(CALLS)])
    except Exception as exc:  # out of registers/shared memory, a wrong answer, ...
        print(f"    failed ({type(exc).__name__}: {str(exc)[:100]}): {cfg}")
        return None


# The MoE decode down kernel as a dense GEMV (kernels/dense_gemv.py): thin tiles along
# the contiguous reduction axis, software-pipelined; at T > 1 each token's programs re-read the weight.
STREAM_SWEEP = [{"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": s}
                for bn, bk, w, s in [(4, 512, 4, 3), (8, 512, 4, 3), (8, 256, 4, 3), (16, 256, 4, 3),
                                     (4, 1024, 4, 3), (8, 1024, 8, 3), (16, 512, 8, 3), (8, 512, 4, 4),
                                     (4, 512, 4, 2), (2, 1024, 4, 3)]]


def time_stream(case, cfg, dtype):
    """µs per call of dense_gemv with cfg (checked against gemv_ref first), or None."""
    try:
        y = dense_gemv(case["x"], case["ws"][0], config=cfg)
        err = rel_err(y, gemv_ref(case["x"], case["ws"][0])[0])
        if not err <= TOL[dtype]:
            raise AssertionError(f"rel err {err:.1e}")
        ws = case["ws"]
        return time_graph([lambda w=ws[i % len(ws)]: dense_gemv(case["x"], w, config=cfg) for i in range(CALLS)])
    except Exception as exc:
        print(f"    stream failed ({type(exc).__name__}: {str(exc)[:100]}): {cfg}")
        return None


def time_torch(case, fused):
    """µs per call of the unfused path: F.linear, after the rms_norm kernel when fused."""
    ws, x, res, nw = case["ws"], case["x"], case["res"], case["nw"]

    def call(w):
        h = rms_norm(x, nw, 1e-6, res)[0] if fused else x
        return F.linear(h, w)
    return time_graph([lambda w=ws[i % len(ws)]: call(w) for i in range(CALLS)])


def bench_shape(name, T, case, dtype, sms):
    N, D = SHAPES[name]
    gbs = lambda us: case["wbytes"] / us / 1e3 if us else None  # noqa: E731  (GB/s)
    row = {"shape": name, "N": N, "D": D, "T": T, "weight_mb": case["wbytes"] / 1e6}
    row["cublas_us"] = time_torch(case, fused=False)
    default = default_config(T, N, D, sms)
    row["default"] = {"config": default, "us": time_gemv(case, default, False, dtype)}
    sweep = [{"config": c, "us": time_gemv(case, c, False, dtype)} for c in candidates(T)]
    row["sweep"] = sweep
    best = min([r for r in sweep + [row["default"]] if r["us"]], key=lambda r: r["us"])
    row["best"] = best
    stream = [{"config": c, "us": time_stream(case, c, dtype)} for c in STREAM_SWEEP]
    row["stream"] = min([r for r in stream if r["us"]], key=lambda r: r["us"], default=None)
    if row["stream"]:
        row["stream"]["gbs"] = gbs(row["stream"]["us"])
    row["norm_cublas_us"] = time_torch(case, fused=True)
    row["fused_default_us"] = time_gemv(case, default, True, dtype)
    row["fused_best_us"] = time_gemv(case, best["config"], True, dtype)
    for key in ("cublas_us", "norm_cublas_us", "fused_default_us", "fused_best_us"):
        row[key.replace("_us", "_gbs")] = gbs(row[key])
    row["default"]["gbs"], row["best"]["gbs"] = gbs(row["default"]["us"]), gbs(best["us"])
    return row


def _fmt(us, gbs):
    if us is None:
        return f"{'-':>15s}"
    flag = "!" if gbs * 1e9 > HBM_BYTES_PER_S else " "  # above HBM: read from L2, not a result
    return f"{us:7.1f} {gbs:6.0f}{flag}"


def print_row(r):
    c = r["best"]["config"]
    tag = f"{c['BLOCK_N']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}{' dot' if c['dot'] else ''}"
    cols = [_fmt(r[k + "_us"], r[k + "_gbs"]) for k in ("norm_cublas", "fused_default", "fused_best")]
    st = r.get("stream")
    sc = st and st["config"]
    stream = (f"{_fmt(st['us'], st['gbs'])} {sc['BLOCK_N']}x{sc['BLOCK_K']} w{sc['num_warps']} s{sc['num_stages']}"
              if st else "-")
    print(f"{r['shape']:13s} {r['T']:3d} | {_fmt(r['cublas_us'], r['cublas_gbs'])} "
          f"{_fmt(r['default']['us'], r['default']['gbs'])} {_fmt(r['best']['us'], r['best']['gbs'])} "
          f"{tag:22s} | {' '.join(cols)} | stream {stream}")


def _compile_worker(job):
    """A fresh process: launch each (config, T) once so Triton writes the kernel to its disk cache."""
    dtype_str, pairs = job
    dtype = getattr(torch, dtype_str)
    w = torch.randn(256, 512, device="cuda", dtype=dtype)  # N, D divisible by 16 like the real shapes
    for cfg, T, fused in pairs:
        x = torch.randn(T, 512, device="cuda", dtype=dtype)
        kw = dict(norm_weight=x[0].clone(), residual=x.clone()) if fused else {}
        try:
            gemv(x, w, **kw, config=cfg)
        except Exception:
            pass  # the timing loop reports it
    torch.cuda.synchronize()
    return len(pairs)


def precompile(tokens, dtype, sms, n_workers):
    """Every (config, T, fused) the timing loop may launch, over worker processes (the fused
    variant of every candidate, since any of them may be a shape's best)."""
    cfgs = {T: candidates(T) + [default_config(T, N, D, sms) for N, D in SHAPES.values()]
            for T in tokens}
    pairs = {json.dumps([c, T, f], sort_keys=True) for T in tokens for c in cfgs[T] for f in (0, 1)}
    pairs = [tuple(json.loads(p)) for p in sorted(pairs)]
    jobs = [(str(dtype).removeprefix("torch."), pairs[i::n_workers]) for i in range(n_workers)]
    t0 = time.time()
    with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
        n = sum(pool.map(_compile_worker, jobs))
    print(f"precompiled {n} (config, T, fused) launches in {time.time() - t0:.0f} s with {n_workers} workers")


def check(device, dtype):
    """Correctness only: default and sweep configs, plain and fused, on 16x-shrunk shapes."""
    n_bad = n_ok = 0
    for name, (N, D) in SHAPES.items():
        N, D = N // 64 + 8, D // 16 + 16  # non-multiples of the tiles; D a multiple of 16
        for T in TOKENS:
            case = make_case(N, D, T, dtype, device)
            cfgs = [default_config(T, N, D)] + candidates(T)[::8]
            for cfg in cfgs:
                for fused in (False, True):
                    try:
                        checked(case, cfg, fused, dtype)
                        n_ok += 1
                    except Exception as exc:
                        n_bad += 1
                        print(f"FAIL {name} N={N} D={D} T={T} fused={fused} {cfg}: {exc}")
    print(f"check: {n_ok} passed, {n_bad} failed ({dtype}, {device})")
    return n_bad == 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    p.add_argument("--json", help="write every timing here")
    p.add_argument("--check", action="store_true", help="correctness only (CPU: interpreter, fp32)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                   help="parallel compile processes (0: compile in the timing loop)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.check or device.type == "cpu":
        sys.exit(0 if check(device, torch.bfloat16 if device.type == "cuda" else torch.float32) else 1)
    dtype, sms = torch.bfloat16, torch.cuda.get_device_properties(device).multi_processor_count
    if args.workers:
        precompile(args.tokens, dtype, sms, args.workers)
    print(f"{'shape':13s} {'T':>3s} | {'cuBLAS us GB/s':>15s} {'default us GB/s':>15s} "
          f"{'best us GB/s':>15s} {'best config':22s} | {'norm+cuBLAS':>15s} {'fused default':>15s} "
          f"{'fused best':>15s}")
    rows, t0 = [], time.time()
    for name in args.shapes:
        for T in args.tokens:
            case = make_case(*SHAPES[name], T, dtype, device)
            rows.append(bench_shape(name, T, case, dtype, sms))
            print_row(rows[-1])
            del case
    print(f"timed in {time.time() - t0:.0f} s ('!' = above {HBM_BYTES_PER_S / 1e12:.2f} TB/s: L2, not HBM)")
    if args.json:
        meta = {"device": torch.cuda.get_device_name(device), "triton": triton.__version__,
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "dtype": str(dtype),
                "calls_per_graph": CALLS}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
