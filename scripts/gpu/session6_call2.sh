#!/usr/bin/env bash
# Session 6, call 2 on nvidia-h200 (~5 min): issue 12's packed-pair decode kernels, each GEMM's tiles timed alone
# (scripts/pair_tiles.py: Mixtral-8x7B / Qwen3-30B-A3B / OLMoE, int4 and int8, T = 1 and 2), then Nsight
# Compute on the pair kernels at Mixtral T = 1 with their default tiles.
# Usage (device tool, repo root): bash scripts/gpu/session6_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 420 python3 scripts/pair_tiles.py --out $R/tiles > $R/tiles.log 2>&1
echo "tiles exit $?" >> $R/tiles.log
for f in int4 int8; do
  timeout 60 ncu --clock-control none -k regex:'_(gate_up|down)_pair_kernel' --launch-skip 2 --launch-count 2 \
    --section SpeedOfLight --section SchedulerStats --section WarpStateStats --section LaunchStats --section Occupancy \
    python3 scripts/ncu_quant_decode.py --shape mixtral-8x7b --format $f --variant pair --repeat 2 \
    > $R/ncu_${f}_pair.txt 2>&1
done
tar czf $OUT/results.tgz -C $OUT r
sed -n '/^# best tile/,$p' $R/tiles.log
grep -E "ERROR|FAIL" $R/tiles.log | head -5
for f in $R/ncu_*.txt; do echo "== $f"; grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Compute \(SM\)|No Eligible|Registers Per|Achieved Occupancy|Theoretical Occupancy|Stall|ERROR" $f | head -30; done
