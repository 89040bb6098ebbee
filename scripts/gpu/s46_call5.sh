#!/usr/bin/env bash
# Forty-sixth session, call 5 (~3 min, one GPU): the combine's tile with its slots unrolled (the 256 x 2-warp tile was
# chosen in the twenty-first session with the runtime loop), graphed OLMoE decode steps at bs 64 / 16.
# Usage (device tool, repo root): bash scripts/gpu/s46_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
F=minimoe.kernels.fused_moe
v() { echo "$1:$F.COMBINE_BLOCK_D=$2,$F.COMBINE_WARPS=$3"; }
timeout 240 python3 scripts/step_probe.py --models olmoe --batches 64 16 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "$(v d512w2 512 2)" --variant "$(v d512w1 512 1)" --variant "$(v d1024w2 1024 2)" \
  --variant "$(v d128w1 128 1)" --variant "$(v d256w1 256 1)" --json $R/combine_tiles.json > $R/combine_tiles.txt 2>&1
echo "--- combine tiles rc $? t=$SECONDS"; tail -13 $R/combine_tiles.txt
tar czf $OUT/r.tgz -C $OUT r
