#!/usr/bin/env bash
# (Runs the code of commit 38248f4: DENSE_DECODE_VARIANT was removed after this call, -0.67% OLMoE / -0.08% Qwen3.)
# Session 12, call 9 on nvidia-h200 (~5 min): fp8 dense decode layers of width <= 2048 through the previous "gemv"
# kernel (one launch, no pack_pairs) while the experts keep "pair" (the fp8 tile sweep, call 6: OLMoE / Qwen3 D x D
# gemv 4.7-4.8 µs, pair 4.9-5.7): fused_moe_quant_small.DENSE_DECODE_VARIANT, graphed bs-1 step, OLMoE, Qwen3-30B-A3B.
# Usage (device tool, repo root): bash scripts/gpu/session12_call9.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V="--variant base --variant dense_gemv:minimoe.kernels.fused_moe_quant_small.DENSE_DECODE_VARIANT={0:(2048,'gemv')}"
for m in olmoe qwen3; do
  [ $SECONDS -gt 380 ] && { echo "$m: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 150 python3 scripts/step_probe.py --quant fp8 --models $m $V --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -3
done
tar czf $OUT/r.tgz -C $OUT r
