#!/usr/bin/env bash
# (Runs the code of commit 51aae20: --l2-prefetch was removed after call 3; docs/results/2026-12-01-s12/README.md.)
# Session 12, call 2 on nvidia-h200 (~6 min): --l2-prefetch issued by the q/k/v stream GEMV (each of its programs
# asks the L2 for a ~20-50 KB share of the o projection's weight once its output is stored). GPU tests (same bits,
# same tokens), then scripts/l2_prefetch_probe.py off / on interleaved, graphed bs-1 step of Mixtral, OLMoE,
# Qwen3-30B-A3B, DeepSeek-V2-Lite.
# Usage (device tool, repo root): bash scripts/gpu/session12_call2.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "prefetch" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
for m in mixtral olmoe qwen3 deepseek-v2-lite; do
  [ $SECONDS -gt 420 ] && { echo "$m: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 120 python3 scripts/l2_prefetch_probe.py --models $m --batches 1 --json $R/probe_$m.json > $R/probe_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/probe_$m.txt | tail -3
done
tar czf $OUT/r.tgz -C $OUT r
