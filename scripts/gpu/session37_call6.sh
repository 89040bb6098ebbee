#!/usr/bin/env bash
# Session 37, call 6 on nvidia-h200 (~2 min): call 5 found one eager decode step of another Generator after the
# graphed prefill heals the decode step. Does one host-launched kernel (a torch add, a Triton RMSNorm) heal it?
# Usage (device tool, repo root): bash scripts/gpu/session37_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V=none,used,used+other-step,used+add,used+norm,used+norm-pdl
for m in olmoe qwen3; do
  timeout 270 python3 scripts/prefill_state_probe.py --model $m --variants $V --json $R/pstate_$m.json 2>&1 | grep -v Warn | tee $R/pstate_$m.txt | grep -v Assert | head -40
  echo "--- $m t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
