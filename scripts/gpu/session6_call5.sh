#!/usr/bin/env bash
# Session 6, call 5 on nvidia-h200 (~2 min): split-K for the pair kernels' GEMM2 and dense layers
# (scripts/pair_tiles.py, the call-3 winners with SPLIT 1-8), then the GPU tests of the quantized paths
# (the pair PTX with h at 2^-12 and |x| ~ 100, graphed == eager).
# Usage (device tool, repo root): bash scripts/gpu/session6_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 300 python3 scripts/pair_tiles.py --out $R/tiles > $R/tiles.log 2>&1
echo "tiles exit $?" >> $R/tiles.log
timeout 150 python3 -m pytest -q -m gpu tests/test_quant_gpu.py > $R/pytest_gpu.txt 2>&1
tar czf $OUT/results.tgz -C $OUT r
sed -n '/^# best tile/,$p' $R/tiles.log
grep -E "ERROR|FAIL" $R/tiles.log | head -5
grep -E "^mixtral.*(down|dense)" $R/tiles.log | head -60
tail -4 $R/pytest_gpu.txt
