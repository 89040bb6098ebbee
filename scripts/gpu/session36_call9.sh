#!/usr/bin/env bash
# Session 36, call 9 on nvidia-h200 (~2 min): the bs-1 step's slow state follows a Generator holding a prefill graph
# (calls 4, 7) and a loop cloning graph outputs (calls 5, 7), not small-pool placement (call 8). Is the prefill graph's
# output clone the trigger? alloc_probe, every round with a prefill graph, with and without graphs.PREFILL_CLONE.
# Usage (device tool, repo root): bash scripts/gpu/session36_call9.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for m in olmoe qwen3; do
  for c in clone noclone; do
    X=""; [ $c = noclone ] && X="--no-prefill-clone"
    timeout 100 python3 scripts/alloc_probe.py --model $m --batch 1 --rounds 3 --prefill-graph all $X \
      --json $R/alloc_${m}_$c.json 2>&1 | grep -v Warn | tee $R/alloc_${m}_$c.txt | cut -c1-60
    echo "--- $m $c t=$SECONDS"
  done
done
tar czf $OUT/r.tgz -C $OUT r
