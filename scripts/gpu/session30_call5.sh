#!/usr/bin/env bash
# Session 30, call 5 on nvidia-h200 (~9 min): the final code, `--fold-router` on by default at bs 1 (routers of <= 64
# experts; 8 copies, 32 for DeepSeek-V2-Lite's fp32 gate):
#  1. every `-m gpu` test (graphed == eager greedy tokens on every tiny family, now through the fold at batch 1) and
#     tests/test_o_route.py;
#  2. bench.py at bs 1, 128 / 128, `--fold-router off` then the default, DeepSeek-V2-Lite, OLMoE, Qwen1.5-MoE, Mixtral.
# Usage (device tool, repo root): bash scripts/gpu/session30_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
timeout 280 python3 -m pytest -q -p no:cacheprovider -rf -m gpu tests/ tests/test_o_route.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
for m in deepseek-v2-lite olmoe qwen1.5-moe mixtral; do
  for f in off auto; do
    [ $SECONDS -lt 540 ] && { timeout $((585 - SECONDS)) python3 bench.py --model $m --fused --warmup 1 --iters 3 \
      --input-len 128 --output-len 128 --bs 1 --fold-router $f --json $R/bench_${m}_$f.json > $R/bench_${m}_$f.txt 2>&1;
      echo "--- $m fold $f rc $?"; grep -A1 "out tok/s" $R/bench_${m}_$f.txt | tail -1 | cut -c1-150; }
  done
done
tar czf $OUT/r.tgz -C $OUT r
