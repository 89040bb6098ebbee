#!/usr/bin/env bash
# Twentieth session, call 4 (~5 min): kernel-by-kernel profiles of the graphed decode step (scripts/profile_step.py)
# where issue 12 / 16 targets are near: Mixtral-8x7B int8 bs 1 (3.88 ms against 3.8) beside bf16 bs 1, and OLMoE bs 64
# (14,022 tok/s against 15,000).
# Usage (device tool, repo root): bash scripts/gpu/session20_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 scripts/profile_step.py --model mixtral --quant int8 --bs 1 --steps 10 --fused \
  --json $R/prof_mixtral_int8.json > $R/prof_mixtral_int8.txt 2>&1; echo "--- int8 rc $?"
timeout 120 python3 scripts/profile_step.py --model olmoe --bs 64 --steps 10 --fused \
  --json $R/prof_olmoe_bs64.json > $R/prof_olmoe_bs64.txt 2>&1; echo "--- olmoe bs64 rc $?"
[ $SECONDS -lt 250 ] && { timeout 120 python3 scripts/profile_step.py --model mixtral --bs 1 --steps 10 --fused \
  --json $R/prof_mixtral_bf16.json > $R/prof_mixtral_bf16.txt 2>&1; echo "--- bf16 rc $?"; }
for f in $R/prof_*.txt; do echo "== $f"; grep -A14 "decode:" $f | head -16; grep -A22 "one layer in launch order" $f | head -24; done
tar czf $OUT/r.tgz -C $OUT r
