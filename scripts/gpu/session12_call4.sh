#!/usr/bin/env bash
# (Runs the code of commit 420b658: PRELOAD was removed after this call; docs/results/2026-12-01-s12/README.md.)
# Session 12, call 4 on nvidia-h200 (~7 min): the dense stream GEMV loads its first weight tiles before its PDL wait
# (fused_moe_small PRELOAD, dense_gemv.PRELOAD_TILES). GPU tests (same bits), then scripts/step_probe.py base /
# pre1 / pre2 interleaved, graphed bs-1 step of Mixtral, OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite.
# Usage (device tool, repo root): bash scripts/gpu/session12_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gemv.py -k "preload or dense_gemv" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
V="--variant base --variant pre1:minimoe.kernels.dense_gemv.PRELOAD_TILES=1 --variant pre2:minimoe.kernels.dense_gemv.PRELOAD_TILES=2"
for m in mixtral olmoe qwen3 deepseek-v2-lite; do
  [ $SECONDS -gt 430 ] && { echo "$m: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 130 python3 scripts/step_probe.py --models $m $V --json $R/probe_$m.json > $R/probe_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/probe_$m.txt | tail -4
done
tar czf $OUT/r.tgz -C $OUT r
