#!/usr/bin/env bash
# Session 36, call 6 on nvidia-h200 (~3 min): which action leaves the bs-1 decode step slow for the rest of the process
# (calls 4-5)? scripts/state_probe.py on OLMoE, one process an action: none, a prefill graph, the same prefill eager on
# a side stream, a captured cuBLAS product, a captured SDPA, a captured add.
# Usage (device tool, repo root): bash scripts/gpu/session36_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for act in none prefill-graph prefill-eager mm-graph sdpa-graph add-graph; do
  timeout 60 python3 scripts/state_probe.py --model olmoe --action $act --json $R/state_olmoe_$act.json 2>&1 \
    | grep -v Warn | tee -a $R/state.txt
done
echo "--- t=$SECONDS"
tar czf $OUT/r.tgz -C $OUT r
