"""The instruction mix of a quantized tensor-core kernel's main loop, compiled for sm90 on a machine without a GPU.

    python scripts/sass_mix.py [--bits 4|8] [--tile 16 128 128] [--warps 4] [--stages 3] [--modes off ops asm]

Triton's wheel ships ptxas and nvdisasm, so a kernel can be compiled for an H200 and read as SASS anywhere. This
compiles fused_moe_quant's GEMM1 (`_gate_up_q_kernel`, Mixtral's shape: the gate and the up tile of one K step) for
each setting of `fused_moe_quant.BIASED_TILES` (the int4 byte tiles' operands: "off" = codes -> fp32 by the 2^23
trick -> a pack to bf16; "ops" / "asm" = biased bf16 operands from Triton integer ops / PTX), finds the main loop
(the longest block ending in a backward branch) and prints its instruction count by opcode: the integer pipe
(LOP3, PRMT, SHF, SGXT), the conversions (F2FP, I2F), the tensor cores (HMMA; HGMMA for wgmma tiles of 64+ rows),
shared memory (LDS, STS) and barriers (BAR). int8 (--bits 8) has only the "off" mode. Launch attributes follow the real launch: 16-byte aligned pointers, and the dims and strides Mixtral's
stacks divide by 16. A count is not a time (the GPU measures that: scripts/step_probe.py), but it shows where a
loop's issue slots go before a device minute is spent (docs/quantization.md, fifteenth session).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

DIV16 = {"I", "D", "KW", "NG", "stride_at", "stride_sat", "stride_we", "stride_wn", "stride_se", "stride_sn",
         "stride_ht", "stride_yt"}
GROUPS = {"integer pipe": ("LOP3", "PRMT", "SHF", "SGXT", "IADD3", "BFE"), "conversions": ("F2FP", "I2F", "F2F"),
          "tensor cores": ("HMMA", "HGMMA"), "shared memory": ("LDS", "LDSM", "STS"), "barriers": ("BAR",)}


def compile_gate_up(bits: int, tile: tuple[int, int, int], warps: int, stages: int, byte_mode: int):
    from minimoe.kernels import fused_moe_quant as FQ
    fn = FQ._gate_up_q_kernel
    bm, bn, bk = tile
    consts = dict(BITS=bits, CODES=0, GROUP=128 if bits == 4 else 0, ROW_BLOCK=1, OFFSET=8.0 if bits == 4 else 128.0,
                  HAS_ZERO=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, DOT_PRECISION="tf32", PDL=False,
                  BYTES=byte_mode)
    ptr = {"a_ptr": "*bf16", "sa_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp32", "z_ptr": "*fp32", "c_ptr": "*fp32",
           "h_ptr": "*bf16", "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "num_padded_ptr": "*i32"}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        sig[name] = "constexpr" if name in consts else ptr.get(name, "i32")
        if name in ptr or name in DIV16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main_loop_mix(kernel) -> collections.Counter:
    """Opcode counts (with modifiers) of the longest block that ends in a backward branch to its own label."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
        text = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    labels = {ln.strip()[:-1]: i for i, ln in enumerate(lines) if re.match(r"\s*\.L_x_\d+:", ln)}
    loops = [(labels[m.group(1)], i) for i, ln in enumerate(lines)
             if (m := re.search(r"BRA `\((\.L_x_\d+)\)", ln)) and labels.get(m.group(1), i) < i]
    start, end = max(loops, key=lambda se: se[1] - se[0]) if loops else (0, len(lines))
    ops = collections.Counter()
    for ln in lines[start:end]:
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)(\.[A-Z0-9_.]+)?", ln)
        if m:
            ops[m.group(2) + (m.group(3) or "")] += 1
    return ops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=4, choices=[4, 8])
    p.add_argument("--tile", type=int, nargs=3, default=[16, 128, 128], metavar=("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["off", "ops", "asm"], choices=["off", "ops", "asm"])
    p.add_argument("--top", type=int, default=12, help="opcodes listed per mode")
    a = p.parse_args(argv)
    if a.bits == 8 and a.modes != ["off"]:
        p.error("int8 has no biased operands (fused_moe_quant.BIASED_TILES is int4's): --bits 8 takes --modes off")
    os.environ.pop("TRITON_INTERPRET", None)
    byte_mode = {"off": 2 if a.bits == 4 else 1, "ops": 3, "asm": 4}
    print(f"# _gate_up_q_kernel int{a.bits}, tile {a.tile}, {a.warps} warps, {a.stages} stages, sm90: main loop "
          "(one K step, gate and up), instructions per thread")
    for mode in a.modes:
        ops = main_loop_mix(compile_gate_up(a.bits, tuple(a.tile), a.warps, a.stages, byte_mode[mode]))
        groups = {g: sum(v for k, v in ops.items() if k.split(".")[0] in names) for g, names in GROUPS.items()}
        print(f"{mode:>4}: {sum(ops.values()):5d} total | " + " | ".join(f"{g} {v}" for g, v in groups.items()))
        print("      " + ", ".join(f"{k} {v}" for k, v in ops.most_common(a.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
