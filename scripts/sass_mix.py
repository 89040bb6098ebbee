"""The instruction mix of a quantized tensor-core kernel's main loop, compiled for sm90 on a machine without a GPU.

    python scripts/sass_mix.py [--bits 4|8] [--tile 16 128 128] [--warps 4] [--stages 3] [--modes off ops asm]
    python scripts/sass_mix.py --pair up|down [--bits 4|8|0] [--tile 4 1024] [--warps 2] [--stages 1] [--wide]

Triton's wheel ships ptxas and nvdisasm, so a kernel can be compiled for an H200 and read as SASS anywhere. This
compiles fused_moe_quant's GEMM1 (`_gate_up_q_kernel`, Mixtral's shape: the gate and the up tile of one K step) for
each setting of `fused_moe_quant.BIASED_TILES` (the int4 byte tiles' operands: "off" = codes -> fp32 by the 2^23
trick -> a pack to bf16; "ops" / "asm" = biased bf16 operands from Triton integer ops / PTX), finds the main loop
(the longest block ending in a backward branch) and prints its instruction count by opcode: the integer pipe
(LOP3, PRMT, SHF, SGXT), the conversions (F2FP, I2F), the tensor cores (HMMA; HGMMA for wgmma tiles of 64+ rows),
shared memory (LDS, STS) and barriers (BAR). int8 (--bits 8) has only the "off" mode. Launch attributes follow the real launch: 16-byte aligned pointers, and the dims and strides Mixtral's
stacks divide by 16. A count is not a time (the GPU measures that: scripts/step_probe.py), but it shows where a
loop's issue slots go before a device minute is spent (docs/quantization.md, fifteenth session).

--pair compiles the batch-1 decode kernels instead (fused_moe_quant_pair: GEMM1 `up` or GEMM2 `down`, tile BLOCK_N x
BLOCK_K; fp8 is --bits 0) once per `chain` (pair_quads.py: fp16 sums over one word or four) and counts the same way.

Compile with the GPU machine's Triton, not the local one: the layout Triton picks for a tile can change between
versions, and the count is only as good as that layout (sixteenth session: a [ROWS, Q, 4] load that Triton 3.9 laid
out well put one row on each lane under 3.6, the H200's, and cost +29% a step). Triton's wheel carries its own ptxas,
so `pip install --no-deps --target DIR triton==3.6.0` and `PYTHONPATH=DIR python scripts/sass_mix.py ...` compile
exactly what the GPU runs; the first line of the output names the version.
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


PAIR_DIV16 = {"I", "IP", "D", "KW", "stride_xt", "stride_we", "stride_wn", "stride_se", "stride_sn", "stride_ht",
              "stride_ot"}


def compile_pair(gemm: str, bits: int, tile: tuple[int, int], warps: int, stages: int, wide: bool, chain: int):
    """fused_moe_quant_pair's GEMM1 ("up": x packed, Mixtral's even widths) or GEMM2 ("down": split over 8) for sm90,
    int4 in groups of 128, int8 and fp8 (bits 0) with row scales."""
    from minimoe.kernels import fused_moe_quant_pair as P
    fn = P._down_pair_kernel if gemm == "down" else P._gate_up_pair_kernel
    consts = dict(BITS=bits or 8, GROUP=128 if bits == 4 else 0, ROW_BLOCK=1, OFFSET=8 if bits == 4 else 128,
                  HAS_ZERO=False, X_PACKED=True, ASM=True, WIDE=wide, BLOCK_N=tile[0], BLOCK_K=tile[1], STAGES=stages,
                  PDL=True, FP8=bits == 0, CHAIN=chain)
    if gemm == "down":
        consts.update(DENSE=False, IN_UNSCALE=1.0, SPLIT=8)
    else:
        consts.update(H_PW=8, EVEN=True, X_TILE=P.X_TILE)
    ptr = {"x_ptr": "*i32", "h_ptr": "*i32" if gemm == "down" else "*fp16", "w_ptr": "*i32", "s_ptr": "*bf16",
           "z_ptr": "*bf16", "ids_ptr": "*i64", "out_ptr": "*bf16", "weights_ptr": "*fp32", "ws_ptr": "*fp32",
           "cnt_ptr": "*i32"}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        sig[name] = "constexpr" if name in consts else ptr.get(name, "i32")
        if name in ptr or name in PAIR_DIV16:
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


def _print_mix(name: str, ops: collections.Counter, top: int) -> None:
    groups = {g: sum(v for k, v in ops.items() if k.split(".")[0] in names) for g, names in GROUPS.items()}
    f32 = sum(v for k, v in ops.items() if k.startswith("HADD2.F32"))
    print(f"{name:>4}: {sum(ops.values()):5d} total | " + " | ".join(f"{g} {v}" for g, v in groups.items())
          + f" | fp16->fp32 {f32}")
    print("      " + ", ".join(f"{k} {v}" for k, v in ops.most_common(top)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=4, choices=[4, 8, 0], help="4, 8, or 0 (fp8: --pair only)")
    p.add_argument("--tile", type=int, nargs="+", default=None,
                   help="BLOCK_M BLOCK_N BLOCK_K (default 16 128 128); with --pair BLOCK_N BLOCK_K (default 4 1024)")
    p.add_argument("--warps", type=int, default=None, help="default 4 (--pair: 2)")
    p.add_argument("--stages", type=int, default=None, help="default 3 (--pair: 1)")
    p.add_argument("--modes", nargs="+", default=["off", "ops", "asm"], choices=["off", "ops", "asm"])
    p.add_argument("--pair", choices=["up", "down"], help="the batch-1 pair kernels' GEMM1 / GEMM2, chains 1 and 4")
    p.add_argument("--wide", action="store_true", help="--pair: a wide tile (scales a word / a quad)")
    p.add_argument("--top", type=int, default=12, help="opcodes listed per mode")
    a = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    if a.pair:
        tile = tuple(a.tile or (4, 1024))
        if len(tile) != 2:
            p.error("--pair takes --tile BLOCK_N BLOCK_K")
        warps, stages = a.warps or 2, a.stages or 1
        print(f"# Triton {triton.__version__} | pair {a.pair} {('int%d' % a.bits) if a.bits else 'fp8'}, tile {tile}"
              f"{' wide' if a.wide else ''}, {warps} warps, {stages} stages, sm90: main loop, instructions per thread")
        for chain in (1, 4):
            _print_mix(f"c{chain}", main_loop_mix(compile_pair(a.pair, a.bits, tile, warps, stages, a.wide, chain)),
                       a.top)
        return 0
    if a.bits == 0:
        p.error("fp8 has no byte tiles here: --bits 0 needs --pair")
    a.tile = a.tile or [16, 128, 128]
    if len(a.tile) != 3:
        p.error("--tile takes BLOCK_M BLOCK_N BLOCK_K")
    a.warps, a.stages = a.warps or 4, a.stages or 3
    if a.bits == 8 and a.modes != ["off"]:
        p.error("int8 has no biased operands (fused_moe_quant.BIASED_TILES is int4's): --bits 8 takes --modes off")
    byte_mode = {"off": 2 if a.bits == 4 else 1, "ops": 3, "asm": 4}
    print(f"# Triton {triton.__version__} | _gate_up_q_kernel int{a.bits}, tile {a.tile}, {a.warps} warps, "
          f"{a.stages} stages, sm90: main loop (one K step, gate and up), instructions per thread")
    for mode in a.modes:
        _print_mix(mode, main_loop_mix(compile_gate_up(a.bits, tuple(a.tile), a.warps, a.stages, byte_mode[mode])),
                   a.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
