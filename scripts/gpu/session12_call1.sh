#!/usr/bin/env bash
# (Runs the code of commit 7476bb1: --l2-prefetch was removed after call 3; docs/results/2026-12-01-s12/README.md.)
# Session 12, call 1 on nvidia-h200 (~8 min): --l2-prefetch (the split decode attention asks the L2 for the o
# projection's weight). GPU tests (same tokens / same bits with the prefetch), then scripts/l2_prefetch_probe.py:
# off / start / end interleaved, graphed bs-1 step of OLMoE, Mixtral, Qwen3-30B-A3B, DeepSeek-V2-Lite, then OLMoE
# bs 16 / 64 as a guard.
# Usage (device tool, repo root): bash scripts/gpu/session12_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "prefetch" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
for m in olmoe mixtral qwen3 deepseek-v2-lite; do
  [ $SECONDS -gt 450 ] && { echo "$m: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 150 python3 scripts/l2_prefetch_probe.py --models $m --batches 1 --json $R/probe_$m.json > $R/probe_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/probe_$m.txt | tail -4
done
if [ $SECONDS -lt 480 ]; then
  PYTHONPATH=$PWD timeout 110 python3 scripts/l2_prefetch_probe.py --models olmoe --batches 16 64 --rounds 2 --variants off start --json $R/probe_olmoe_big.json > $R/probe_olmoe_big.txt 2>&1
  echo "--- olmoe big rc $?"; tail -5 $R/probe_olmoe_big.txt
fi
tar czf $OUT/r.tgz -C $OUT r
