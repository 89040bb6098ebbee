#!/usr/bin/env bash
# Forty-eighth session (~1-2 min on an H200): pending_h200_s48b.sh's first part only, for a call with little device time
# left: the three unseen-shape cells at T=4096 that the rule's TMA prefill tiles changed (last measured on an H100),
# on an H200, against the tuner's full --tma search in the same process. Exits 3 at once on any GPU but an H200.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200_s48c.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader)
case "$gpu" in *H200*) ;; *) echo "not an H200: $gpu"; exit 3;; esac
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 240 python3 scripts/untuned_shapes.py --tma --workers 12 --shapes qwen2-57b phi3.5-moe granite-3b --buckets 4096 \
  --json $R/untuned_4096.json > $R/untuned_4096.txt 2>&1
echo "--- untuned three rc $? t=$SECONDS"; tail -6 $R/untuned_4096.txt | cut -c1-220
tar czf $OUT/r.tgz -C $OUT r
