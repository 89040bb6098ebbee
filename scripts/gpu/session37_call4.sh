#!/usr/bin/env bash
# Session 37, call 4 on nvidia-h200 (~3 min): call 3 found the bs-1 step slow exactly when the graphed prefill was the
# last to fill its cache. Does the graphed prefill leave a different cache, and does swapping the K / V move the state?
# Usage (device tool, repo root): bash scripts/gpu/session37_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for m in olmoe qwen3; do
  timeout 270 python3 scripts/prefill_cache_probe.py --model $m --json $R/pcache_$m.json 2>&1 | grep -v Warn | tee $R/pcache_$m.txt | head -40
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
