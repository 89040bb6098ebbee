#!/usr/bin/env bash
# Session 25, call 5 on nvidia-h200 (~4 min): tall_gemm's tiles for prefill's fp32 router (skinny_gemm.TALL_CONFIG:
# 64 x 64 x 64 at 4 warps was a guess; each row block re-splits the whole gate, so taller blocks split it fewer times),
# in DeepSeek-V2-Lite's graphed prefill at bs 64; then bench.py Qwen1.5-MoE bs 64 (its prefill's 32,768 pairs now take
# the chunked alignment).
# Usage (device tool, repo root): bash scripts/gpu/session25_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
T=minimoe.kernels.skinny_gemm.TALL_CONFIG
timeout 150 python3 scripts/step_probe.py --prefill --models deepseek-v2-lite --batches 64 --variant base \
  --variant "m128w8:$T={'BLOCK_M':128,'BLOCK_N':64,'BLOCK_K':64,'num_warps':8,'num_stages':3}" \
  --variant "m128w4:$T={'BLOCK_M':128,'BLOCK_N':64,'BLOCK_K':64,'num_warps':4,'num_stages':3}" \
  --variant "m32:$T={'BLOCK_M':32,'BLOCK_N':64,'BLOCK_K':64,'num_warps':4,'num_stages':3}" \
  --variant "k128:$T={'BLOCK_M':64,'BLOCK_N':64,'BLOCK_K':128,'num_warps':4,'num_stages':3}" \
  --rounds 3 --steps 5 --json $R/prefill_tall.json > $R/prefill_tall.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/prefill_tall.txt | tail -6
timeout 100 python3 bench.py --model qwen1.5-moe --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 64 \
  --json $R/bench_qwen15_64.json > $R/bench_qwen15_64.txt 2>&1; echo "--- bench rc $?"
grep -A1 "config  TTFT" $R/bench_qwen15_64.txt | tail -1
tar czf $OUT/r.tgz -C $OUT r
