#!/usr/bin/env bash
# Session 30, call 7 on nvidia-h200 (~3 min): the final code (o_route.STEP_SHAPES: DeepSeek-V2-Lite's fold on [4, 1024]
# x 2 warps, 32 copies): tests/test_o_route.py on the GPU, then bench.py DeepSeek-V2-Lite bs 1 twice, 128 / 128.
# Usage (device tool, repo root): bash scripts/gpu/session30_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
timeout 120 python3 -m pytest -q -p no:cacheprovider -rf tests/test_o_route.py > $R/pytest_o_route.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_o_route.txt; grep -E "^FAILED" $R/pytest_o_route.txt | head
for i in 1 2; do
  [ $SECONDS -lt 200 ] && { timeout $((240 - SECONDS)) python3 bench.py --model deepseek-v2-lite --fused --warmup 1 \
    --iters 3 --input-len 128 --output-len 128 --bs 1 --json $R/bench_dsv2_$i.json > $R/bench_dsv2_$i.txt 2>&1;
    echo "--- bench dsv2 $i rc $?"; grep -A1 "out tok/s" $R/bench_dsv2_$i.txt | tail -1 | cut -c1-120; }
done
tar czf $OUT/r.tgz -C $OUT r
