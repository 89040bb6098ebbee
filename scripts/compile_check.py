"""Compile one Triton kernel for the H200 (sm_90a) on a machine without a GPU, and print what its SASS costs.

    python scripts/compile_check.py minimoe.kernels.route:_route_topk_kernel --warps 4 \
        --const K=8 BLOCK_E=128 BLOCK_K=8 SOFTMAX_FIRST=True RENORM=True PDL=False RANK=True \
        --type logits_ptr=*fp32 w_ptr=*fp32 ids_ptr=*i64

The interpreter (TRITON_INTERPRET=1) runs a kernel's logic on the CPU but not its compiler: a plain Python global read
inside a jitted function, an op without a GPU lowering or a tile that spills show up only on the GPU machine (the
thirty-third session lost its first device call to the first). Triton's whole pipeline, front end to cubin with its
bundled ptxas, runs without a GPU, so this script compiles the kernel for sm_90a and reads the cubin with the bundled
cuobjdump: registers, stack (spills), shared memory, and counts of SASS instructions, barriers (BAR.SYNC) and shuffles
(SHFL), and a hash of the SASS instructions (`sass_sha`: two builds of a kernel with the same hash compile
to the same code, e.g. before and after a refactor; COMPILE_CHECK_SASS=FILE writes the SASS, to diff). The counts are static (a loop body counts once); they compare variants of one kernel, they do not time it.

Arguments: the kernel as MODULE:NAME; --const NAME=VALUE for every constexpr the launch passes (Python literals;
strings such as "tf32" as they are); --type NAME=TYPE for arguments whose Triton type is not the default (pointers
default to *bf16, arguments named eps / scaling / skip / clip / qk_scale / scale to fp32, the rest to i32; a host TMA
descriptor as "tensordesc<bf16[128, 64]>"); --warps; --stages (num_stages, default Triton's 3). Run it with
TRITON_INTERPRET unset: the interpreter replaces the compiler it needs.

Specialization as at launch: the runtime tells the compiler that a pointer whose address is a multiple of 16 is, and
likewise an int argument whose value is (strides, widths), unless the kernel lists it in do_not_specialize. Without
that the compiler cannot prove 16-byte contiguity, so it neither vectorizes the loads nor pipelines them (cp.async):
the thirty-fifth session saw the aligned fused MoE "unpipelined, 402 spill stores" here for a kernel that runs
pipelined with none. So pointers are taken as 16-byte aligned (torch's allocations are), and --div16 NAME... names
the int arguments the launch passes as multiples of 16 (for the fused MoE's GEMMs: I D stride_xt stride_we stride_wn
stride_ht I_S, and stride_yt for GEMM2, at real model widths). Besides registers, stack, shared memory (the compiled
kernel's need, dynamic included) and the instruction / barrier / shuffle counts, it counts cp.async copies (LDGSTS),
TMA loads (UTMALDG), and the PTX's acquire and release operations (a flag protocol's ordering: Triton 3.6 drops an
acquire atomic whose result is unused). The GPU machine's Triton (3.6) may lower differently from the one installed here (a Triton
3.6 wheel unpacked on PYTHONPATH compiles as that machine does). Exit 2 with one line on a bad argument, 1 with the
compiler's message where the kernel does not compile.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import inspect
import os
import re
import subprocess
import sys
import tempfile

FLOAT_NAMES = {"eps", "scaling", "skip", "clip", "qk_scale", "scale"}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text                                    # e.g. PRECISION=tf32


def _fail(message: str, code: int = 2) -> None:
    print(f"compile_check.py: {message}", file=sys.stderr)
    sys.exit(code)


def _pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            _fail(f"{what} {item!r} is not NAME=VALUE")
        out[name] = value
    return out


def compile_kernel(kernel, const: dict, types: dict, warps: int, div16: tuple = (), stages: int | None = None) -> dict:
    """Compile `kernel` (a triton.JITFunction) for sm_90a -> {regs, stack, shared, instructions, barriers, shuffles,
    ldgsts, tma_loads}. div16: int arguments known to be multiples of 16 (pointers always are, as at launch)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    unknown = set(const) | set(types) | set(div16)
    unknown -= set(kernel.arg_names)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not arguments of {kernel.fn.__name__}")
    params = getattr(kernel, "params", [])
    unspecialized = sorted(p.name for p in params if p.name in div16 and getattr(p, "do_not_specialize", False))
    if unspecialized:
        raise ValueError(f"{', '.join(unspecialized)} in do_not_specialize: the launch never tells the compiler "
                         f"they divide by 16")
    missing = [p.name for p in params if getattr(p, "is_constexpr", False) and p.name not in const
               and p.default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"missing --const for {', '.join(missing)}")
    # a constexpr left out takes its default, as a launch binds it (Triton's ASTSource would leave it unbound)
    const = {**{p.name: p.default for p in params if getattr(p, "is_constexpr", False) and p.name not in const},
             **const}
    sig = {}
    for name in kernel.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        elif name.endswith("_ptr"):
            sig[name] = "*bf16"
        else:
            sig[name] = "fp32" if name in FLOAT_NAMES else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if n not in const and (sig[n].startswith("*") or n in div16)}
    src = ASTSource(kernel, sig, {(kernel.arg_names.index(n),): v for n, v in const.items()}, attrs)
    options = {"num_warps": warps} if stages is None else {"num_warps": warps, "num_stages": stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", path],
                              capture_output=True, text=True, check=True).stdout
    if os.environ.get("COMPILE_CHECK_SASS"):             # the SASS itself, for a diff of two builds
        with open(os.environ["COMPILE_CHECK_SASS"], "w") as f:
            f.write(sass)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage)
    return {"regs": int(m.group(1)), "stack": int(m.group(2)),
            "shared": max(int(m.group(3)), int(getattr(compiled.metadata, "shared", 0) or 0)),
            "instructions": len(re.findall(r"/\*[0-9a-f]{4}\*/", sass)), "barriers": sass.count("BAR.SYNC"),
            "shuffles": sass.count("SHFL"), "ldgsts": sass.count("LDGSTS"), "tma_loads": sass.count("UTMALDG"),
            "acquires": len(re.findall(r"\.acquire\b", compiled.asm["ptx"])),
            "releases": len(re.findall(r"\.release\b", compiled.asm["ptx"])),
            "sass_sha": hashlib.sha256("\n".join(re.findall(r"/\*[0-9a-f]{4}\*/\s*(.*?)\s*;", sass)).encode())
            .hexdigest()[:12]}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kernel", help="MODULE:NAME, e.g. minimoe.kernels.route:_route_topk_kernel")
    p.add_argument("--const", nargs="*", default=[], help="NAME=VALUE for each constexpr")
    p.add_argument("--type", nargs="*", default=[], help="NAME=TRITON_TYPE (*fp32, *i64, i64, fp32 ...)")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, help="num_stages (default: Triton's)")
    p.add_argument("--div16", nargs="*", default=[], help="int arguments the launch passes as multiples of 16")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _fail("unset TRITON_INTERPRET: this script needs Triton's compiler, which the interpreter replaces")
    mod_name, colon, attr = a.kernel.partition(":")
    if not colon:
        _fail(f"{a.kernel!r} is not MODULE:NAME")
    try:
        kernel = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        _fail(f"cannot find {a.kernel} ({e})")
    const = {k: _literal(v) for k, v in _pairs(a.const, "--const").items()}
    try:
        stats = compile_kernel(kernel, const, _pairs(a.type, "--type"), a.warps, tuple(a.div16), a.stages)
    except ValueError as e:
        _fail(str(e))
    except Exception as e:                                # the compiler's own error: what this script is for
        _fail(f"{a.kernel} does not compile for sm_90a:\n{e}", code=1)
    print(f"{a.kernel} ({a.warps} warps): " + ", ".join(f"{k} {v}" for k, v in stats.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
