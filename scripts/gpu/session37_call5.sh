#!/usr/bin/env bash
# Session 37, call 5 on nvidia-h200 (~3 min): call 4 found the graphed and the eager prefill leave bit-identical caches,
# and swapping the K / V does not move the state. Does host-launched work after the graphed prefill heal it (another
# Generator's eager prefill, or one eager step), does a graphed prefill of another cache after an eager one slow it,
# and does the Triton kernels' preferred shared-memory carveout decide it?
# Usage (device tool, repo root): bash scripts/gpu/session37_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V=none,used,used+other-eager,used+other-step,none+other-graphed,used-carve100,none-carve100,used-carve0
for m in olmoe qwen3; do
  timeout 270 python3 scripts/prefill_state_probe.py --model $m --variants $V --json $R/pstate_$m.json 2>&1 | grep -v Warn | tee $R/pstate_$m.txt | grep -v Assert | head -40
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
