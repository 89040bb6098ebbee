"""Does any minimoe kernel touch global memory before its PDL wait? Compiled for an H200 here, no GPU needed.

    python scripts/pdl_order_check.py [--cards olmoe-tiny mixtral-tiny ...] [--arch 90] [--interpreter-tiles]

Under Programmatic Dependent Launch (kernels/pdl.py) a kernel may start while its predecessor still runs, so nothing
may read or write global memory before `gdc_wait` (PTX griddepcontrol.wait, SASS ACQBULK) except an L2 prefetch of
weights. The source puts the wait first in every kernel (`wait_then_release`), but what counts is the machine code:
the compiler could schedule a load above it (a pipelined loop's prologue, Triton issue #11905). The twenty-second
session saw the bf16 fast paths' logits leave a test's bound in 3 of 75 eager decode draws with PDL on and 0 of 75
with it off (weak evidence; docs/results/2026-12-02-s22): this is the part of that question that needs no GPU. Two steps:
  1. record (interpreter process, fp16 where the GPU runs bf16): each tiny card through the fast paths (fused
     experts, Triton attention, --ops triton, --gemv stream, the norm fold and the rope fusion), a prefill of 3 x 13
     tokens, then one decode step at batch 3 and one at batch 1 (plus real-width router, GEMV, skinny GEMM, attention
     merge and greedy launches the tiny sizes never reach), with the GPU's tile tables (`on_gpu()` forced true, the H200's name; --interpreter-tiles: the CPU's),
     recording every kernel launch (module, kernel, argument types, constexprs, warps, stages) while it runs;
  2. check (normal process): compile each launch with PDL=True for sm`arch`, disassemble it (Triton's nvdisasm) and
     list, before the first ACQBULK, every instruction that reaches global memory (LDG, STG, LDGSTS, ATOMG, RED,
     generic LD / ST / ATOM, bulk / TMA copies). An L2 prefetch (the router fold's PREFETCH_GATE) is allowed, and so
     are global loads (LDG) in the kernels of WEIGHT_LOADS_FIRST, which load weights no kernel writes before the wait
     (kernels/o_route.py: its gate columns and norm weights); a store or an atomic there still fails.
Prints one line per kernel variant and exits 1 if any has such an instruction, no wait at all, or does not compile.
Quantized kernels are not recorded (scripts/quant_compile_check.py compiles those). About 3-5 minutes on 2 CPUs.
The GPU runs Triton 3.6: `pip install --no-deps --target DIR triton==3.6.0` and `--compiler-path DIR` compiles with it
(the compiler's scheduling is what is checked; its interpreter may not run under a newer numpy, so step 1 keeps the
installed Triton).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

TORCH_TO_TRITON = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32", "torch.int32": "i32",
                   "torch.int64": "i64", "torch.float8_e4m3fn": "fp8e4nv", "torch.uint8": "u8", "torch.int8": "i8",
                   "torch.bool": "i1"}
LAUNCH_KEYS = ("num_warps", "num_stages", "launch_pdl", "grid", "warmup", "launch_cooperative_grid")
CARDS = ["olmoe-tiny", "mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "deepseek-moe-tiny", "deepseek-v2-lite-tiny",
         "deepseek-v3-tiny"]
# SASS opcodes that read or write global memory (or generic addresses, which may be global)
WEIGHT_LOADS_FIRST = {"_o_route_kernel"}   # kernels whose loads before the wait read weights only (see above)
GLOBAL = re.compile(r"\b(LDG|STG|LDGSTS|ATOMG|ATOM|RED|REDG|LD|ST|UBLKCP|UTMALDG|UTMASTG|UTMAREDG)(\.|\s|$)")


def record(cards: list[str], out: str, gpu_tiles: bool) -> None:
    """Step 1 (interpreter process): run the fast paths, record every launch."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from triton.runtime import interpreter
    from minimoe.generate import Generator
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    launches = {}
    real_run = interpreter.InterpretedFunction.run

    def run(self, *args, **kwargs):
        sig_fn = inspect.signature(self.fn)
        bound = sig_fn.bind(*args, **{k: v for k, v in kwargs.items() if k in sig_fn.parameters})
        opts = {k: v for k, v in kwargs.items() if k not in sig_fn.parameters and k not in LAUNCH_KEYS}
        bound.apply_defaults()                      # a constexpr left at its default is still part of the variant
        sig, consts = {}, {}
        for name, value in bound.arguments.items():
            if "constexpr" in str(sig_fn.parameters[name].annotation):
                consts[name], sig[name] = value, "constexpr"
            elif isinstance(value, torch.Tensor):
                sig[name] = "*" + TORCH_TO_TRITON[str(value.dtype)]
            elif isinstance(value, bool):
                sig[name] = "i1"
            elif isinstance(value, int):
                sig[name] = "i64" if abs(value) >= 2 ** 31 else "i32"
            else:
                sig[name] = "fp32"
        if "PDL" in consts:
            key = json.dumps([self.fn.__module__, self.fn.__name__, consts, kwargs.get("num_warps", 4),
                              kwargs.get("num_stages", 3), opts], sort_keys=True, default=str)
            launches[key] = {"module": self.fn.__module__, "kernel": self.fn.__name__, "signature": sig,
                             "constexprs": consts, "num_warps": kwargs.get("num_warps", 4),
                             "num_stages": kwargs.get("num_stages", 3), "options": opts}
        return real_run(self, *args, **kwargs)

    interpreter.InterpretedFunction.run = run
    if gpu_tiles:
        from minimoe.kernels import (dense_gemv, fused_moe_quant, fused_moe_quant_gemv, fused_moe_quant_pair,
                                     fused_moe_quant_small, moe_configs, qkv_gemv_rope, small_configs)
        for mod in (dense_gemv, qkv_gemv_rope, small_configs, moe_configs, fused_moe_quant, fused_moe_quant_small,
                    fused_moe_quant_pair, fused_moe_quant_gemv):
            mod.on_gpu = lambda: True
            if hasattr(mod, "device_name"):
                mod.device_name = lambda: "NVIDIA_H200"
    for card in cards:
        s = RunSettings(device="cpu", dtype="fp16", experts="fused", attn="triton", ops="triton", gemv="stream",
                        fold_norm="on", fuse_rope="on", fold_router="on", fold_attn_norm="on", eager=True,
                        eager_prefill=True)
        model, cfg, _ = build_model(card, "dummy", dtype=torch.float16, device="cpu", settings=s, seed=0)
        if card == cards[0]:
            print(f"# settings: ops {s.ops}, gemv {s.gemv}, fold_norm {s.fold_norm}, fuse_rope {s.fuse_rope}, "
                  f"fuse_shared {s.fuse_shared}, fold_router {s.fold_router}, fold_attn_norm {s.fold_attn_norm}",
                  file=sys.stderr)
        for B, prompt in ((3, 13), (1, 5)):          # prefill, then one decode step at batch 3 and at batch 1
            gen = Generator(model, B, 32)
            with torch.inference_mode():
                gen.prefill(torch.randint(0, cfg.vocab_size, (B, prompt)))
                step = gen.cache.step(1, gen.host_len)
                model(torch.randint(0, cfg.vocab_size, (B, 1)), step, gen.cache, select=-1)
        print(f"# {card}: {len(launches)} kernel variants so far", file=sys.stderr, flush=True)
    # kernels the tiny cards' sizes never reach, at real widths: the split-K router (folded at batch 1, unfolded at
    # batch 3), the stream GEMV, the skinny GEMM (router gates at 5-64 tokens), the attention's merge kernel, greedy
    from minimoe.kernels import dense_gemv, gate_splitk, gate_splitk_fold, greedy, skinny_gemm
    from minimoe.kernels.decode_attention import decode_attention
    h16 = torch.float16
    for E in (64, 128):
        gate = torch.randn(E, 2048, dtype=h16)
        x = torch.randn(1, 2048, dtype=h16)
        gate_splitk_fold.norm_gate_route_splitk(x, x.clone(), torch.ones(2048, dtype=h16), 1e-6, gate, 8,
                                                renorm=False)
        gate_splitk.gate_route_splitk(torch.randn(3, 2048, dtype=h16), gate, 8, renorm=False)
        skinny_gemm.skinny_gemm(torch.randn(16, 2048, dtype=h16), gate)
    dense_gemv.dense_gemv(torch.randn(1, 4096, dtype=h16), torch.randn(2048, 4096, dtype=h16))
    dense_gemv.dense_gemv(torch.randn(2, 2048, dtype=h16), torch.randn(5120, 2048, dtype=h16))
    cache = torch.randn(2, 512, 2, 64, dtype=h16)
    decode_attention(torch.randn(2, 8, 64, dtype=h16), cache, cache.clone(), torch.tensor([300, 500], dtype=torch.int32),
                     0.125, max_splits=8)
    greedy.greedy_tail(torch.randn(2, 50304, dtype=h16))
    greedy.ONE_LAUNCH = True                      # its one-launch variant (a knob, off by default)
    greedy.greedy_tail(torch.randn(2, 50304, dtype=h16), counters=torch.zeros(2, dtype=torch.int32))
    greedy.ONE_LAUNCH = False
    from minimoe.kernels import norm_gemv               # the norm fold at OLMoE's q/k/v width, and its embedding gather
    w_qkv, g_n = torch.randn(6144, 2048, dtype=h16), torch.randn(2048, dtype=h16)
    norm_gemv.norm_gemv(torch.randn(1, 2048, dtype=h16), torch.randn(1, 2048, dtype=h16), g_n, 1e-6, w_qkv)
    norm_gemv.norm_gemv(torch.randn(64, 2048, dtype=h16), None, g_n, 1e-6, w_qkv, ids=torch.tensor([5]))
    print(f"# with the real-width kernels: {len(launches)} kernel variants", file=sys.stderr, flush=True)
    with open(out, "w") as f:
        json.dump(list(launches.values()), f)


def compile_sass(fn, signature: dict, constexprs: dict, options: dict, arch: int = 90) -> str:
    """SASS text of a @triton.jit function compiled for sm`arch` (Triton's ptxas and nvdisasm; no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    k = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    try:
        return subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def globals_before_wait(sass: str) -> tuple[list[str], bool]:
    """(instructions reaching global memory before the first ACQBULK, whether there is one) in SASS text, in
    address order (the wait sits in the entry block, so what precedes it there runs first)."""
    before = []
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if not m:
            continue
        ins = re.sub(r"^@!?U?P\w+\s+", "", m.group(1).strip())          # drop a predicate guard
        if ins.startswith("ACQBULK"):
            return before, True
        if GLOBAL.match(ins):
            before.append(ins)
    return before, False


def sass_before_wait(ln: dict, arch: int) -> tuple[list[str], bool]:
    """globals_before_wait of one recorded launch, compiled with PDL on (fp16 pointers become bf16, as on the GPU)."""
    import importlib
    fn = getattr(importlib.import_module(ln["module"]), ln["kernel"])
    sig = {k: ("*bf16" if v == "*fp16" else v) for k, v in ln["signature"].items()}
    options = {"num_warps": ln["num_warps"], "num_stages": ln["num_stages"], **ln.get("options", {})}
    return globals_before_wait(compile_sass(fn, sig, dict(ln["constexprs"], PDL=True), options, arch))


def check_all(path: str, arch: int) -> int:
    with open(path) as f:
        launches = json.load(f)
    bad = 0
    for ln in launches:
        label = f"{ln['module'].rsplit('.', 1)[-1]}.{ln['kernel']} warps={ln['num_warps']} stages={ln['num_stages']} " \
                + " ".join(f"{k}={v}" for k, v in ln["constexprs"].items() if k.startswith("BLOCK"))
        try:
            before, waited = sass_before_wait(ln, arch)
            if ln["kernel"] in WEIGHT_LOADS_FIRST:
                before = [ins for ins in before if not ins.startswith("LDG")]
        except Exception as e:                      # the compiler's message, last lines: counted as a failure
            bad += 1
            print(f"FAIL  {label}: does not compile: {type(e).__name__}: "
                  f"{' | '.join(str(e).strip().splitlines()[-2:])[:300]}", flush=True)
            continue
        if before or not waited:
            bad += 1
            print(f"FAIL  {label}: {'no ACQBULK' if not waited else ''} {before[:6]}", flush=True)
        else:
            print(f"OK    {label}", flush=True)
    print(f"# {len(launches) - bad} of {len(launches)} kernel variants: no global access before the PDL wait (sm{arch})")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", nargs="+", default=CARDS)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--interpreter-tiles", action="store_true", help="the CPU's tiles instead of the H200's tables")
    p.add_argument("--compiler-path", help="compile (step 2) with the Triton found here, e.g. a `pip install --target`"
                   " of the GPU's version; the interpreter (step 1) keeps the installed one")
    p.add_argument("--record-only", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.record_only:
        record(a.cards, a.record_only, not a.interpreter_tiles)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        subprocess.run([sys.executable, __file__, "--record-only", path, "--cards", *a.cards,
                        *(["--interpreter-tiles"] if a.interpreter_tiles else [])], check=True, env=env)
        os.environ.pop("TRITON_INTERPRET", None)
        if a.compiler_path:
            sys.path.insert(0, a.compiler_path)
        import triton
        print(f"# compiler: Triton {triton.__version__} ({os.path.dirname(triton.__file__)})", flush=True)
        return check_all(path, a.arch)


if __name__ == "__main__":
    sys.exit(main())
