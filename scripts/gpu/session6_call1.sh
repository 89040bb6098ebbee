#!/usr/bin/env bash
# Session 6, call 1 on nvidia-h200 (~7 min): issue 12's packed-pair decode kernels (fused_moe_quant_pair.py).
#  1. scripts/quant_decode_sweep.py on Mixtral-8x7B / Qwen3-30B-A3B / OLMoE, int4 and int8, T = 1 and 2: the
#     current default ("gemv"), its tiles, and the pair kernels in 6 tiles each, every one checked first.
#  2. Nsight Compute on Mixtral int4 / int8 at T = 1: gemv vs pair (SpeedOfLight, scheduler, warp stalls).
# Usage (device tool, repo root): bash scripts/gpu/session6_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $R/gpu.txt 2>&1
timeout 330 python3 scripts/quant_decode_sweep.py --out $R/sweep --shapes mixtral-8x7b qwen3-30b-a3b olmoe \
  --formats int4 int8 --tokens 1 2 --variants gemv pair > $R/sweep.log 2>&1
echo "sweep exit $?" >> $R/sweep.log
for f in int4 int8; do
  for v in gemv pair; do
    timeout 60 ncu --clock-control none -k regex:'_(gate_up|down)_(gemv_q|pair)_kernel' --launch-skip 2 --launch-count 2 \
      --section SpeedOfLight --section SchedulerStats --section WarpStateStats --section LaunchStats --section Occupancy \
      python3 scripts/ncu_quant_decode.py --shape mixtral-8x7b --format $f --variant $v --repeat 2 \
      > $R/ncu_${f}_${v}.txt 2>&1
  done
done
tar czf $OUT/results.tgz -C $OUT r
grep -E "PASS|FAIL|ERROR" $R/sweep.log | grep -E "int4|int8" | awk '{print}' | cut -c1-170
sed -n '/^shape /,/^# best/p' $R/sweep.log
for f in $R/ncu_*.txt; do echo "== $f"; grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Issue Slots Busy|No Eligible|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Size|Grid Size|Stall" $f | head -40; done
