#!/usr/bin/env bash
# Session 28, call 3 on nvidia-h200 (~3 min): bs-64 decode attention, occupancy and split plans instead of tiles.
# Call 2: no tile improved OLMoE's bs-64 step by more than 0.11%. The PDL-off profile (s24 call 2) has the split kernel
# at 26.8 µs a layer for ~16.5 µs of bytes at 133 cached positions: 1,024 programs in ~2.6 waves of 3 a SM (64 KB of
# shared memory each at 2 stages). Variants: 1 stage (32 KB: ~7 a SM), 1 stage x 2 warps, two splits (2,048 programs past
# 192 cached positions, and a merge kernel); 3 stages again (-0.08% in call 2).
# Usage (device tool, repo root): bash scripts/gpu/session28_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
D=minimoe.kernels.decode_attention; M=$D.DEFAULT_TILES
timeout 300 python3 scripts/step_probe.py --models olmoe qwen3 --batches 64 --input-len 128 --steps 120 --rounds 3 \
  --variant base --variant s1:$M="{'num_stages':1}" --variant w2s1:$M="{'num_warps':2,'num_stages':1}" \
  --variant split2:$D.MIN_TILES_PER_SPLIT=1,$D.PROGRAMS_PER_SM=8 --variant n64s3:$M="{'num_stages':3}" \
  --json $R/step_bs64.json > $R/step_bs64.txt 2>&1
echo "--- step rc $?"; grep -v "^#" $R/step_bs64.txt | tail -12
tar czf $OUT/r.tgz -C $OUT r
