#!/usr/bin/env bash
# Session 35, call 6 on nvidia-h200 (~3 min): the vocabulary head's GEMV tile inside the graphed bs-1 step (never swept
# in the step: the rule's [4, 1024] x 4 warps x 3 stages from the fifth session's standalone sweep). Qwen3-30B-A3B
# (151,936 x 2048, 622 MB: ~148 µs of a ~2,480 µs step at 4.2 TB/s) and OLMoE (50,304 x 2048); base repeated.
# Usage (device tool, repo root): bash scripts/gpu/session35_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
T=minimoe.kernels.dense_gemv.TILES
v() {  # name BLOCK_N BLOCK_K warps stages
  echo "--variant $1:$T={(151936,2048):{'BLOCK_N':$2,'BLOCK_K':$3,'num_warps':$4,'num_stages':$5},(50304,2048):{'BLOCK_N':$2,'BLOCK_K':$3,'num_warps':$4,'num_stages':$5}}"
}
timeout 420 python3 scripts/step_probe.py --models qwen3 olmoe --batches 1 --input-len 128 --steps 60 --rounds 3 \
  --variant base $(v n8k1024 8 1024 4 3) $(v n16k512 16 512 4 3) $(v n8k2048 8 2048 4 1) $(v n16k1024w8 16 1024 8 3) \
  $(v n4k2048w2 4 2048 2 1) $(v n4k1024w2 4 1024 2 3) --variant base2 --json $R/step_head.json > $R/step_head.txt 2>&1
echo "--- step_probe rc $? t=$SECONDS"; grep -v Warn $R/step_head.txt | tail -24
tar czf $OUT/r.tgz -C $OUT r
