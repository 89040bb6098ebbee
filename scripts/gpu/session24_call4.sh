#!/usr/bin/env bash
# Session 24, call 4 on nvidia-h200 (~8 min): the final code (pair join, split3 with 16 x 128 x 16 tiles).
#  1. bench.py DeepSeek-V2-Lite bs 64 and bs 16 (128 / 128, 3 iterations);
#  2. every GPU test.
# Usage (device tool, repo root): bash scripts/gpu/session24_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py --model deepseek-v2-lite $W --bs 64 --json $R/bench_dsv2_64.json > $R/bench_dsv2_64.txt 2>&1
echo "--- bench dsv2 64 rc $?"; grep "minimoe bs" $R/bench_dsv2_64.txt
python3 -c "import json;c=json.load(open('$R/bench_dsv2_64.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 80 python3 bench.py --model deepseek-v2-lite $W --bs 16 --ceilings $R/ceil.json \
  --json $R/bench_dsv2_16.json > $R/bench_dsv2_16.txt 2>&1; echo "--- bench dsv2 16 rc $?"; grep "minimoe bs" $R/bench_dsv2_16.txt
timeout $((570 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED" $R/pytest_gpu.txt | tail -6
tar czf $OUT/r.tgz -C $OUT r
