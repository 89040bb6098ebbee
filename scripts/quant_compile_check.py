"""Compile every quantized kernel for an H200 (sm90) on a machine without a GPU, with the GPU's launch configs.

    python scripts/quant_compile_check.py [--arch 90] [--shapes mixtral-8x7b qwen3-30b-a3b olmoe] [--sweep-configs]

The Triton interpreter runs the kernels' arithmetic on the CPU but skips the compiler: a kernel that reads a
non-constexpr global, a reshape or dot the GPU backend refuses, or a layout it cannot lower passes every CPU
test and fails on the GPU, where the session's minutes are few. Triton's wheel ships ptxas, so the whole
pipeline (Python AST -> TTIR -> TTGIR -> LLVM -> PTX -> cubin) runs here too. Two steps:
  1. record: run each launcher (fused_moe_quant at decode and prefill sizes, the decode variants "small",
     "gemv" and (int4 / int8 / fp8) "pair", quant_gemv, the fp8 activation kernel, the skinny GEMM of dense layers
     at 8-64 rows and of router gates; --sweep-configs: also every candidate
     scripts/quant_decode_sweep.py times) under the interpreter with `on_gpu()` forced true, so the GPU tile
     configs are chosen, and
     record every launch (kernel, argument types, constexprs, warps, stages) instead of running it (the prefill
     path's dequantization kernel, moe_dequant, included);
  2. compile: in a fresh process without the interpreter, compile each recorded launch for sm90.
Prints one line per kernel variant (OK / the compiler's error) and exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile

TORCH_TO_TRITON = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32",
                   "torch.int32": "i32", "torch.int64": "i64", "torch.float8_e4m3fn": "fp8e4nv", "torch.uint8": "u8"}
LAUNCH_KEYS = ("num_warps", "num_stages", "launch_pdl", "grid", "warmup")


def record(shapes: list[str], formats: list[str] | None, out: str, sweep: bool = False) -> None:
    """Step 1 (interpreter process): run the launchers, record the launches."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from triton.runtime import interpreter
    from minimoe import qweights as Q
    from minimoe.bench.layer import SHAPES
    from minimoe.kernels import (fused_moe_quant, fused_moe_quant_gemv, fused_moe_quant_pair, fused_moe_quant_small,
                                 moe_align, moe_configs, skinny_gemm)
    from minimoe.linear import ROUTER_TILES
    launches = {}

    def run(self, *args, **kwargs):
        if not any(m in self.fn.__module__ for m in ("quant", "pair_codes", "skinny")):     # not alignment, combine
            return
        bound = inspect.signature(self.fn).bind(*args, **{k: v for k, v in kwargs.items() if k not in LAUNCH_KEYS})
        bound.apply_defaults()                      # a constexpr left at its default is still part of the variant
        sig, consts = {}, {}
        for name, value in bound.arguments.items():
            param = inspect.signature(self.fn).parameters[name]
            if "constexpr" in str(param.annotation):
                consts[name], sig[name] = value, "constexpr"
            elif isinstance(value, torch.Tensor):
                sig[name] = "*" + TORCH_TO_TRITON[str(value.dtype)]
            elif isinstance(value, bool):
                sig[name] = "i1"
            elif isinstance(value, int):
                sig[name] = "i64" if abs(value) >= 2 ** 31 else "i32"
            else:
                sig[name] = "fp32"
        key = json.dumps([self.fn.__module__, self.fn.__name__, consts, kwargs.get("num_warps", 4),
                          kwargs.get("num_stages", 3)], sort_keys=True, default=str)
        launches[key] = {"module": self.fn.__module__, "kernel": self.fn.__name__, "signature": sig,
                         "constexprs": consts, "num_warps": kwargs.get("num_warps", 4),
                         "num_stages": kwargs.get("num_stages", 3)}

    interpreter.InterpretedFunction.run = run
    for mod in (moe_configs, fused_moe_quant, fused_moe_quant_small, fused_moe_quant_gemv, fused_moe_quant_pair):
        mod.on_gpu = lambda: True
    moe_align.ONE_PROGRAM_MAX_NUMEL = 4096
    fmts = {"int8": Q.quantize_int8, "int4": Q.quantize_int4, "int4-zero": lambda w: Q.quantize_int4(w, 128, True),
            "fp8": Q.quantize_fp8, "fp8-block": lambda w: Q.quantize_fp8(w, 128)}
    try:
        from minimoe import qbnb
        qbnb._lib()                       # bitsandbytes itself: nf4 / bnb-int8 are left out without it
        fmts.update(nf4=qbnb.quantize_nf4, **{"bnb-int8": qbnb.quantize_bnb_int8})
    except ImportError:
        print("# nf4 / bnb-int8 left out: bitsandbytes is not installed", file=sys.stderr)
    fmts = {f: q for f, q in fmts.items() if not formats or f in formats}
    for shape in shapes:
        E_real, D, I, K = SHAPES[shape]
        E = 2                             # codes are never read: a 2-expert stand-in with the real D and I,
        for fmt, quantize in fmts.items():  # launched with the configs the real E would get
            w13 = quantize(torch.zeros(E, 2 * I, D))
            w2 = quantize(torch.zeros(E, D, I))
            for T in (1, 64, 4096):
                x = torch.zeros(T, D, dtype=torch.bfloat16)
                ids = torch.zeros(T, K, dtype=torch.int64)
                variant = fused_moe_quant.plan(T, K, E_real)
                decode = ("small", "gemv") if w13.codes == 0 else ("small",)    # bitsandbytes' storage: "small"
                decode += ("pair",) if fused_moe_quant_pair.pair_supported(w13) and \
                    fused_moe_quant_pair.pair_supported(w2) else ()
                cfgs = [{"variant": v} for v in (decode if variant == "small" else (variant,))]
                if variant == "aligned":      # prefill tiles of int4 / int8 go to moe_dequant: the in-kernel path too
                    cfgs[0].update(fused_moe_quant.quant_config(w13, w2, E_real, I, D, K, T))
                    cfgs.append(dict(cfgs[0], in_kernel=True))
                cfgs += sweep_configs(w13, variant) if sweep else []
                for cfg in cfgs:
                    fused_moe_quant.fused_moe_quant(x, w13, w2, ids, torch.zeros(T, K), config=cfg)
            dense = quantize(torch.zeros(1, I, D))
            dense.__class__ = Q.QuantWeight
            for variant in decode:
                fused_moe_quant_small.quant_gemv(torch.zeros(2, D, dtype=torch.bfloat16), dense, {"variant": variant})
            if skinny_gemm.quant_usable(8, dense, torch.bfloat16):      # dense layers at 5-64 rows
                for T in (8, 32, 64):
                    skinny_gemm.skinny_gemm_quant(torch.zeros(T, D, dtype=torch.bfloat16), dense)
            flag = {"int8": "INT8_BYTE_TILES", "int4": "INT4_BYTE_TILES", "int4-zero": "INT4_BYTE_TILES"}.get(fmt)
            if flag:          # the integer tiles' other loads (the default is recorded above): words, int4 strided A,
                saved = getattr(fused_moe_quant, flag), fused_moe_quant.INT4_A_SPLIT, fused_moe_quant.BIASED_TILES
                for on, split, biased in ((False, "registers", "off"), (True, "strided", "off"),   # plain bytes, and
                                          (True, "registers", "off"), (True, "registers", "ops"),  # biased operands
                                          (True, "registers", "asm")):
                    setattr(fused_moe_quant, flag, on)
                    fused_moe_quant.INT4_A_SPLIT = split
                    fused_moe_quant.BIASED_TILES = biased
                    for T in (16, 64):
                        cfg = dict(fused_moe_quant.quant_config(w13, w2, E_real, I, D, K, T), variant="aligned")
                        fused_moe_quant.fused_moe_quant(torch.zeros(T, D, dtype=torch.bfloat16), w13, w2,
                                                        torch.zeros(T, K, dtype=torch.int64), torch.zeros(T, K),
                                                        config=cfg)
                        skinny_gemm.skinny_gemm_quant(torch.zeros(T, D, dtype=torch.bfloat16), dense)
                setattr(fused_moe_quant, flag, saved[0])
                fused_moe_quant.INT4_A_SPLIT, fused_moe_quant.BIASED_TILES = saved[1], saved[2]
        for gate_dtype in (torch.bfloat16, torch.float32):              # router gates (linear.router_logits' tiles)
            for T in (8, 64):
                skinny_gemm.skinny_gemm(torch.zeros(T, D, dtype=torch.bfloat16), torch.zeros(64, D, dtype=gate_dtype),
                                        config=ROUTER_TILES.get(gate_dtype, ROUTER_TILES[None]))
    with open(out, "w") as f:
        json.dump(list(launches.values()), f)


def sweep_configs(w13, variant: str) -> list[dict]:
    """At decode sizes, the candidates scripts/quant_decode_sweep.py times: none meets its compiler first on the GPU."""
    if variant != "small" or w13.codes != 0:        # the sweep times minimoe's own formats
        return []
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from quant_decode_sweep import candidate_configs
    return candidate_configs(w13, 1)


def compile_all(path: str, arch: int) -> int:
    """Step 2 (normal process): compile every recorded launch for sm`arch`."""
    import importlib
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    with open(path) as f:
        launches = json.load(f)
    bad = 0
    for ln in launches:
        fn = getattr(importlib.import_module(ln["module"]), ln["kernel"])
        label = f"{ln['kernel']:24s} " + " ".join(f"{k}={v}" for k, v in ln["constexprs"].items()
                                                   if k not in ("PDL", "DOT_PRECISION"))
        try:
            src = ASTSource(fn=fn, signature=ln["signature"], constexprs=ln["constexprs"])
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                               options={"num_warps": ln["num_warps"], "num_stages": ln["num_stages"]})
            smem = k.metadata.shared if hasattr(k.metadata, "shared") else "?"
            print(f"OK    {label} warps={ln['num_warps']} stages={ln['num_stages']} smem={smem}", flush=True)
        except Exception as e:                      # the compiler's message, first lines
            bad += 1
            msg = " | ".join(str(e).strip().splitlines()[-3:])[:400]
            print(f"FAIL  {label}: {type(e).__name__}: {msg}", flush=True)
    print(f"# {len(launches) - bad} of {len(launches)} kernel variants compile for sm{arch}")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--shapes", nargs="+", default=["mixtral-8x7b", "qwen3-30b-a3b"])
    p.add_argument("--formats", nargs="+", help="only these (int8 int4 int4-zero fp8 fp8-block nf4 bnb-int8)")
    p.add_argument("--sweep-configs", action="store_true", help="also the decode sweep's candidate tiles (slow)")
    p.add_argument("--record-only", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.record_only:
        record(a.shapes, a.formats, a.record_only, a.sweep_configs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        subprocess.run([sys.executable, __file__, "--record-only", path, "--shapes", *a.shapes,
                        *(["--formats", *a.formats] if a.formats else []),
                        *(["--sweep-configs"] if a.sweep_configs else [])], check=True, env=env)
        os.environ.pop("TRITON_INTERPRET", None)
        return compile_all(path, a.arch)


if __name__ == "__main__":
    sys.exit(main())
