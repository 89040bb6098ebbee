#!/usr/bin/env bash
# Session 36, call 8 on nvidia-h200 (~3 min): calls 3-7 saw the bs-1 step in a fast and a slow state by allocation
# history (token recording or a prefill graph before a Generator turned later ones slow; call 7: even with no prefill
# graph). Small-pool placement: alloc_probe with 0-15 x 512-byte pads before each Generator (12 rounds), no recording.
# Usage (device tool, repo root): bash scripts/gpu/session36_call8.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for m in olmoe qwen3; do
  timeout 120 python3 scripts/alloc_probe.py --model $m --batch 1 --rounds 12 --small-pad \
    --json $R/alloc_${m}_small.json 2>&1 | grep -v Warn | tee $R/alloc_${m}_small.txt | cut -c1-60
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
