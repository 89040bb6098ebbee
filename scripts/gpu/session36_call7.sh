#!/usr/bin/env bash
# Session 36, call 7 on nvidia-h200 (~3 min): the bs-1 step is slow when its generator also holds a prefill graph
# (calls 4-5), not after a prefill graph on another generator (call 6). Does capturing the prefill graph in the decode
# graph's memory pool (graphs.PrefillGraph(pool=...)) change that? alloc_probe, one process a mode, OLMoE / Qwen3-30B-A3B.
# Usage (device tool, repo root): bash scripts/gpu/session36_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for m in olmoe qwen3; do
  for mode in none all shared-pool; do
    timeout 100 python3 scripts/alloc_probe.py --model $m --batch 1 --rounds 3 --prefill-graph $mode \
      --json $R/alloc_${m}_$mode.json 2>&1 | grep -v Warn | tee $R/alloc_${m}_$mode.txt | cut -c1-90
    echo "--- $m $mode t=$SECONDS"
  done
done
tar czf $OUT/r.tgz -C $OUT r
