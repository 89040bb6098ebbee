#!/usr/bin/env bash
# Session 36, call 5 on nvidia-h200 (~4 min): call 4 found the bs-1 step slow whenever the prefill graph was captured
# (Qwen3-30B-A3B 2,481-2,485 against 2,452-2,454 µs; OLMoE 901 against 885-888). Which part: the capture, or the
# graphed prefill's run? alloc_probe in odd rounds with the prefill graph captured but the prefill run eagerly
# (captured-unused), and captured before the decode graph (prefill-first); tokens and their count recorded.
# Usage (device tool, repo root): bash scripts/gpu/session36_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
for mode in captured-unused prefill-first alternate; do
  timeout 150 python3 scripts/alloc_probe.py --model olmoe --batch 1 --rounds 6 --prefill-graph $mode \
    --json $R/alloc_olmoe_$mode.json 2>&1 | grep -v Warn | tee $R/alloc_olmoe_$mode.txt | cut -c1-150
  echo "--- $mode t=$SECONDS"
done
tar czf $OUT/r.tgz -C $OUT r
