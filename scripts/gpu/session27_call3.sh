#!/usr/bin/env bash
# Session 27, call 3 on nvidia-h200 (~5 min): the final code (the fold removed: minimoe/ as at 59b1d52).
#  1. every `-m gpu` test (call 1's run of them timed out at 200 s, with the fold's code);
#  2. bench.py DeepSeek-V2-Lite bs 1 (128 / 128) once more: 499.1 (call 1) and 493.7 (call 2) today.
# Usage (device tool, repo root): bash scripts/gpu/session27_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 -m pytest -q -p no:cacheprovider -rf -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for i in 1; do
  [ $SECONDS -lt 150 ] && { timeout 60 python3 bench.py --model deepseek-v2-lite $B --bs 1 --json $R/bench_dsv2_1_$i.json \
    > $R/bench_dsv2_1_$i.txt 2>&1; echo "--- bench $i rc $?"; grep -A1 "config  TTFT" $R/bench_dsv2_1_$i.txt | tail -1; }
done
tar czf $OUT/r.tgz -C $OUT r
