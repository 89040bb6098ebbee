#!/usr/bin/env bash
# Session 12, call 7 on nvidia-h200 (~5 min): fp8's own GEMM1 tile at T = 1 inside the graphed bs-1 step
# (fused_moe_quant_pair.FP8_UP_T1): int8's 16 x 512 / 4 warps (the default until now) against the fp8 sweep's
# 8 x 512 / 2 warps and 16 x 256 / 2 warps (call 6), Mixtral, Qwen3-30B-A3B, OLMoE, --quant fp8.
# Usage (device tool, repo root): bash scripts/gpu/session12_call7.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
M=minimoe.kernels.fused_moe_quant_pair.FP8_UP_T1
V="--variant t16x512w4:$M=(16,512,4,1,False,False) --variant t8x512w2:$M=(8,512,2,1,False,False) --variant t16x256w2:$M=(16,256,2,1,False,False)"
for m in mixtral qwen3 olmoe; do
  [ $SECONDS -gt 420 ] && { echo "$m: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 140 python3 scripts/step_probe.py --quant fp8 --models $m $V --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -4
done
tar czf $OUT/r.tgz -C $OUT r
