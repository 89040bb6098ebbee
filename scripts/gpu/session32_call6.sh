#!/usr/bin/env bash
# Session 32, call 6 on nvidia-h200 (~30 s, the machine warm): PDL-off profiles of Qwen3-30B-A3B and OLMoE bs 1 with the
# final defaults (the split rope kernel's time in the layer). Run inline as one command line; kept here as the record.
# Usage (device tool, repo root): bash scripts/gpu/session32_call6.sh
export PYTHONPATH=$PWD TQDM_DISABLE=1; R=$OUT/r; mkdir -p $R
for m in qwen3 olmoe; do
  timeout 70 python3 scripts/profile_step.py --model $m --bs 1 --steps 5 --pdl off --json $R/prof_${m}_bs1_nopdl.json \
    > $R/prof_${m}_bs1_nopdl.txt 2>&1; echo "--- $m rc $?"
  grep -A12 "one layer in launch order" $R/prof_${m}_bs1_nopdl.txt; grep -A12 "bs1 decode" $R/prof_${m}_bs1_nopdl.txt | head -14
done
tar czf $OUT/r.tgz -C $OUT r
