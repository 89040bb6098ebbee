#!/usr/bin/env bash
# Session 12, call 5 on nvidia-h200 (~8 min): fp8 (e4m3) through the packed-pair decode kernels
# (cvt.rn.f16x2.e4m3x2 pairs + HFMA2, kernels/pair_codes.py) against today's "gemv" decode kernels for fp8.
# 1. GPU tests: the PTX against dequantize-then-matmul (fp8, fp8-block, and int4 / int8 unchanged), graphed == eager.
# 2. One MoE layer, M = 1 / 2 (bench.py --layer --quant fp8 via scripts/bench_variant.py): gemv vs pair, Qwen3-30B-A3B
#    (issue 12's <= 15 µs target) and Mixtral-8x7B, bf16 in the same run.
# 3. The graphed bs-1 step (scripts/step_probe.py --quant fp8): gemv vs pair interleaved, Mixtral, Qwen3, OLMoE.
# Usage (device tool, repo root): bash scripts/gpu/session12_call5.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py -k "pair" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
for v in gemv pair; do
  PYTHONPATH=$PWD timeout 120 python3 scripts/bench_variant.py --decode-variant $v -- --layer --quant fp8 \
    --shapes qwen3-30b-a3b mixtral-8x7b --tokens 1 2 --paths fused --json $R/layer_fp8_$v.json > $R/layer_fp8_$v.txt 2>&1
  echo "--- layer $v rc $?"; grep -E "^(qwen3|mixtral)" $R/layer_fp8_$v.txt
done
V="--variant gemv --variant pair:minimoe.kernels.fused_moe_quant_small.DECODE_VARIANT={0:'pair',4:'pair',8:'pair'}"
for m in mixtral qwen3 olmoe; do
  [ $SECONDS -gt 440 ] && { echo "$m: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 130 python3 scripts/step_probe.py --quant fp8 --models $m $V --json $R/step_fp8_$m.json > $R/step_fp8_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/step_fp8_$m.txt | tail -3
done
tar czf $OUT/r.tgz -C $OUT r
