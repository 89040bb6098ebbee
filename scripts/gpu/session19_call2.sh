#!/usr/bin/env bash
# Nineteenth session, call 2 (~6 min): the decode GEMM1 tile inside the graphed bs-1 step, around call 1's finding
# (SMALL_TILES {None: GEMM1 [2, 2048]}: DeepSeek-V2-Lite -5.3%, Qwen1.5-MoE -6.5% a step; OLMoE +5.1%, Qwen3 +3.6%).
# A tile changes the reduction order, so "same" may say NO (greedy tokens of random weights flip); the rc is then 1.
# Usage (device tool, repo root): bash scripts/gpu/session19_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
S=minimoe.kernels.small_configs.SMALL_TILES
v() { echo "--variant $1:$S={None:$2}"; }            # v NAME TILE-DICT (no spaces: words split on them)
probe() {                                          # probe MODEL BATCHES VARIANT-ARGS...
  local m=$1 b=$2; shift 2
  [ $SECONDS -gt 500 ] && { echo "$m: skipped (time)"; return; }
  timeout 120 python3 scripts/step_probe.py --models $m --batches $b --variant base "$@" \
    --rounds 2 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- probe $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -22
}
SHARED_V="$(v g1_2x2048 "{'BLOCK_N':2,'BLOCK_K':2048}") \
 $(v g1_1x2048 "{'BLOCK_N':1,'BLOCK_K':2048}") \
 $(v g1_2x2048_w8 "{'BLOCK_N':2,'BLOCK_K':2048,'num_warps':8}") \
 $(v g1_4x2048 "{'BLOCK_N':4,'BLOCK_K':2048}") \
 $(v g1_4x2048_w8 "{'BLOCK_N':4,'BLOCK_K':2048,'num_warps':8}") \
 $(v g1_2x2048_w2 "{'BLOCK_N':2,'BLOCK_K':2048,'num_warps':2}") \
 $(v g1_2x1024_s2 "{'BLOCK_N':2,'BLOCK_K':1024,'num_stages':2}") \
 $(v g1_2x2048_g2s4 "{'BLOCK_N':2,'BLOCK_K':2048,'down':{'num_stages':4}}")"
NARROW_V="$(v g1_2x1024 "{'BLOCK_N':2,'BLOCK_K':1024}") \
 $(v g1_2x1024_s2 "{'BLOCK_N':2,'BLOCK_K':1024,'num_stages':2}") \
 $(v g1_4x1024_w8 "{'BLOCK_N':4,'BLOCK_K':1024,'num_warps':8}") \
 $(v g1_8x1024_w8 "{'BLOCK_N':8,'BLOCK_K':1024,'num_warps':8}") \
 $(v g1_4x2048_w8 "{'BLOCK_N':4,'BLOCK_K':2048,'num_warps':8}") \
 $(v g1_1x2048 "{'BLOCK_N':1,'BLOCK_K':2048}") \
 $(v g1_4x512_s3 "{'BLOCK_N':4,'BLOCK_K':512,'num_stages':3}")"
MIXTRAL_V="$(v g1_2x2048 "{'BLOCK_N':2,'BLOCK_K':2048}") \
 $(v g1_4x2048 "{'BLOCK_N':4,'BLOCK_K':2048}") \
 $(v g1_8x1024_w8 "{'BLOCK_N':8,'BLOCK_K':1024,'num_warps':8}") \
 $(v g2_8x1024 "{'down':{'BLOCK_N':8,'BLOCK_K':1024}}") \
 $(v g2_4x1024 "{'down':{'BLOCK_N':4,'BLOCK_K':1024}}") \
 $(v g2_16x512_w8 "{'down':{'BLOCK_N':16,'BLOCK_K':512,'num_warps':8}}") \
 $(v g2_s4 "{'down':{'num_stages':4}}")"
probe deepseek-v2-lite "1 2" $SHARED_V
probe qwen1.5-moe "1 2" $SHARED_V
probe olmoe 1 $NARROW_V
probe qwen3 1 $NARROW_V
probe mixtral 1 $MIXTRAL_V
tar czf $OUT/r.tgz -C $OUT r
