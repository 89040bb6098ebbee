#!/usr/bin/env bash
# Session 36, call 3 on nvidia-h200 (~5 min): is the bs-1 step's two-state time (call 2: Qwen3-30B-A3B ~2,443 or
# ~2,477 µs a step from round to round) a matter of where the generator's buffers land? scripts/alloc_probe.py,
# 12 rounds with pads of 0-63 MB before each Generator, Qwen3-30B-A3B and OLMoE bs 1.
# Usage (device tool, repo root): bash scripts/gpu/session36_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for m in qwen3 olmoe; do
  timeout 200 python3 scripts/alloc_probe.py --model $m --batch 1 --rounds 12 --json $R/alloc_$m.json 2>&1 \
    | grep -v Warn | tee $R/alloc_$m.txt
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
