#!/usr/bin/env bash
# Session 37, call 2 on nvidia-h200 (~3 min): call 1 found the bs-1 step's two states merge with PDL off and that a
# prefill graph held by another Generator does not slow the decode graph. Which part of the Generator's own prefill
# graph does: scripts/prefill_state_probe.py's variants alternate in one process (OLMoE, Qwen3-30B-A3B, bs 1).
# Usage (device tool, repo root): bash scripts/gpu/session37_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for m in olmoe qwen3; do
  timeout 270 python3 scripts/prefill_state_probe.py --model $m --json $R/pstate_$m.json 2>&1 | grep -v Warn | tee $R/pstate_$m.txt
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
