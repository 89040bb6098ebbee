#!/usr/bin/env bash
# Forty-eighth session (~8-9 min on an H200): issue 16's four unseen-shape cells at T=4096 that were last measured on an
# H100 (the three the rule's TMA prefill tiles changed, and DeepSeek-V2), now on an H200, against the tuner's full
# --tma search in the same process. 12 compile workers fit the H200's memory with DeepSeek-V2's 7.6 GB layer.
# Exits 3 at once on any GPU but an H200.
# With the argument "three" (~1-2 min, for a call with little device time left) it stops after the first three cells.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200_s48b.sh [three]
set -u
. scripts/gpu/h200_only.sh
timeout 270 python3 scripts/untuned_shapes.py --tma --workers 12 --shapes qwen2-57b phi3.5-moe granite-3b --buckets 4096 \
  --json $R/untuned_4096.json > $R/untuned_4096.txt 2>&1
echo "--- untuned three rc $? t=$SECONDS"; tail -6 $R/untuned_4096.txt | cut -c1-220
tar czf $OUT/r.tgz -C $OUT r
[ "${1:-}" = three ] && exit 0
timeout $((580 - SECONDS)) python3 scripts/untuned_shapes.py --tma --workers 12 --shapes deepseek-v2 --buckets 4096 \
  --json $R/untuned_dsv2_4096.json > $R/untuned_dsv2_4096.txt 2>&1
echo "--- untuned deepseek-v2 rc $? t=$SECONDS"; tail -4 $R/untuned_dsv2_4096.txt | cut -c1-220
tar czf $OUT/r.tgz -C $OUT r
