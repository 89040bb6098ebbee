#!/usr/bin/env bash
# Session 7, call 4 on nvidia-h200 (~4 min): kernel tables of graphed decode steps with the current code (issue 16's
# remaining gaps): OLMoE bs 64 and bs 1, DeepSeek-V2-Lite bs 64, Mixtral-8x7B bs 1 (scripts/profile_step.py).
# Usage (device tool, repo root): bash scripts/gpu/session7_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
for mb in olmoe:64 olmoe:1 deepseek-v2-lite:64 mixtral:1; do
  m=${mb%:*}; b=${mb#*:}
  timeout 120 python3 scripts/profile_step.py --model $m --bs $b --steps 10 --json $R/prof_${m}_bs$b.json > $R/prof_${m}_bs$b.txt 2>&1
  echo "--- $m bs $b rc $?"; grep -A25 "decode:" $R/prof_${m}_bs$b.txt | head -26
done
