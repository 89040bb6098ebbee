#!/usr/bin/env bash
# Session 13, call 2 on nvidia-h200 (~6 min): where a bs-64 step goes today (issue 16's OLMoE / DeepSeek-V2-Lite bs-64
# targets, issue 12's fp8 ratio), and the fp8 tables of call 1 in the step.
# 1. kernel tables of graphed decode steps (scripts/profile_step.py): OLMoE bs 64 bf16 and fp8, DeepSeek-V2-Lite bs 64.
# 2. scripts/step_probe.py --quant fp8: the tuned fp8_w8a8 tables off / on, interleaved, OLMoE and Qwen3 at bs 16 / 64.
# Usage (device tool, repo root): bash scripts/gpu/session13_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
for mbq in olmoe:64:none olmoe:64:fp8 deepseek-v2-lite:64:none; do
  IFS=: read m b q <<< "$mbq"
  timeout 120 python3 scripts/profile_step.py --model $m --bs $b --quant $q --steps 10 --json $R/prof_${m}_bs${b}_$q.json \
    > $R/prof_${m}_bs${b}_$q.txt 2>&1
  echo "--- $m bs $b $q rc $?"; grep -A22 "decode:" $R/prof_${m}_bs${b}_$q.txt | head -23
done
V="--variant untuned:minimoe.kernels.fused_moe_quant.USE_TUNED=False --variant tuned"
for m in olmoe qwen3; do
  [ $SECONDS -gt 480 ] && { echo "$m: skipped (time)"; continue; }
  timeout 110 python3 scripts/step_probe.py --quant fp8 --models $m --batches 16 64 $V --json $R/step_fp8_$m.json \
    > $R/step_fp8_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/step_fp8_$m.txt | tail -6
done
tar czf $OUT/r.tgz -C $OUT r
