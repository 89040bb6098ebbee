#!/usr/bin/env bash
# Session 36, call 11 on nvidia-h200 (~3 min, the session's last device time): which kernels are slower in the bs-1
# step's slow state (a Generator holding a prefill graph; calls 4-10)? scripts/profile_step.py on Qwen3-30B-A3B and
# OLMoE bs 1, with the prefill graph (the default) and with --eager-prefill (no prefill graph), PDL on.
# Usage (device tool, repo root): bash scripts/gpu/session36_call11.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for m in qwen3 olmoe; do
  for v in graph eager; do
    X=""; [ $v = eager ] && X="--eager-prefill"
    timeout 80 python3 scripts/profile_step.py --model $m --bs 1 --steps 20 $X --json $R/prof_${m}_$v.json \
      > $R/prof_${m}_$v.txt 2>&1
    echo "--- $m $v rc $? t=$SECONDS"; grep -A1 "decode:" $R/prof_${m}_$v.txt | head -2
  done
done
tar czf $OUT/r.tgz -C $OUT r
