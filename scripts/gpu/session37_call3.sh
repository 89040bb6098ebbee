#!/usr/bin/env bash
# Session 37, call 3 on nvidia-h200 (~3 min): call 2 found the slow state follows the graphed prefill's replay (its
# graph held but unused, or dropped: fast; replayed into a shared cache, or captured with PDL off: slow). Is it any
# graph replayed before the decode steps, the stream, the order, or a GPU rested by the eager prefill's ~30-100 ms?
# Usage (device tool, repo root): bash scripts/gpu/session37_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V=none,used,other-replay,add-replay,used-side,used-then-eager,eager-then-used,used-sleep
for m in olmoe qwen3; do
  timeout 270 python3 scripts/prefill_state_probe.py --model $m --variants $V --json $R/pstate_$m.json 2>&1 | grep -v Warn | tee $R/pstate_$m.txt | grep -v Assert | head -40
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
