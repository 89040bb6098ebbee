#!/usr/bin/env bash
# Session 4, H200 call 1 (~8 min): kernel-by-kernel profiles of the graphed decode step for the batch-1
# and MLA rows of issue 16 (landed code), and the fused MoE on five shapes no tuned config lists.
# Usage (device tool, repo root): bash scripts/gpu/session4_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt 2>&1
for mb in deepseek-v2-lite:1 deepseek-v2-lite:64 olmoe:1 qwen3:1 mixtral:1; do
  m=${mb%:*}; b=${mb#*:}
  timeout 120 python3 scripts/profile_step.py --model $m --bs $b --steps 20 --json $R/prof_${m}_bs$b.json \
    > $R/prof_${m}_bs$b.txt 2>&1; echo "rc=$?" >> $R/prof_${m}_bs$b.txt
done
timeout 300 python3 scripts/untuned_shapes.py --json $R/untuned.json > $R/untuned.txt 2>&1; echo "rc=$?" >> $R/untuned.txt
tar czf $OUT/results.tgz -C $OUT r
grep -h "^## " $R/prof_*.txt; tail -30 $R/untuned.txt
