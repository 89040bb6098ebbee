#!/usr/bin/env bash
# Session 28, call 2 on nvidia-h200 (~9 min): the decode attention's tiles inside the graphed step, over a whole
# 128-in / 120-out run (the bs-64 ITL series of OLMoE, Qwen3-30B-A3B and Qwen1.5-MoE steps up ~2% at step 64, where
# the cache passes 192 entries and each split program walks a 4th 64-entry K/V tile).
#  1. OLMoE bs 64 / 16: 6 tile variants of `decode_attention.DEFAULT_TILES` against today's (BLOCK_N 64, 4 warps, 2 stages);
#  2. Qwen3-30B-A3B bs 64 (G = 8): the same tiles, fewer of them.
# Usage (device tool, repo root): bash scripts/gpu/session28_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
M=minimoe.kernels.decode_attention.DEFAULT_TILES
timeout 330 python3 scripts/step_probe.py --models olmoe --batches 64 16 --input-len 128 --steps 120 --rounds 3 \
  --variant base --variant n32:$M="{'BLOCK_N':32}" --variant n32s3:$M="{'BLOCK_N':32,'num_stages':3}" \
  --variant n32w2s3:$M="{'BLOCK_N':32,'num_warps':2,'num_stages':3}" --variant n64w2s3:$M="{'num_warps':2,'num_stages':3}" \
  --variant n64s3:$M="{'num_stages':3}" --variant n128:$M="{'BLOCK_N':128}" \
  --json $R/step_olmoe.json > $R/step_olmoe.txt 2>&1
echo "--- olmoe rc $?"; grep -v "^#" $R/step_olmoe.txt | tail -16
[ $SECONDS -lt 420 ] && { timeout $((560 - SECONDS)) python3 scripts/step_probe.py --models qwen3 --batches 64 --input-len 128 \
  --steps 120 --rounds 3 --variant base --variant n32:$M="{'BLOCK_N':32}" \
  --variant n32w2s3:$M="{'BLOCK_N':32,'num_warps':2,'num_stages':3}" --variant n64w2s3:$M="{'num_warps':2,'num_stages':3}" \
  --json $R/step_qwen3.json > $R/step_qwen3.txt 2>&1; echo "--- qwen3 rc $?"; grep -v "^#" $R/step_qwen3.txt | tail -6; }
tar czf $OUT/r.tgz -C $OUT r
