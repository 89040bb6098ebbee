#!/usr/bin/env bash
# (Runs the code of commit 51aae20: --l2-prefetch was removed after call 3; docs/results/2026-12-01-s12/README.md.)
# Session 12, call 3 on nvidia-h200 (~4 min): where does --l2-prefetch on lose? scripts/profile_step.py (one layer
# in launch order, graphed bs-1 step) with --l2-prefetch off and on, Mixtral and Qwen3-30B-A3B.
# Usage (device tool, repo root): bash scripts/gpu/session12_call3.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for m in mixtral qwen3; do
  for pf in off on; do
    [ $SECONDS -gt 400 ] && { echo "$m $pf: skipped (time)"; continue; }
    PYTHONPATH=$PWD timeout 120 python3 scripts/profile_step.py --model $m --bs 1 --l2-prefetch $pf --json $R/prof_${m}_$pf.json > $R/prof_${m}_$pf.txt 2>&1
    echo "--- $m $pf rc $?"; grep -A14 "launch order" $R/prof_${m}_$pf.txt
  done
done
tar czf $OUT/r.tgz -C $OUT r
