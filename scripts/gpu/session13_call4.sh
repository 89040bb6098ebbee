#!/usr/bin/env bash
# Session 13, call 4 on nvidia-h200 (~9 min): quantized dense layers at 5-64 rows through the skinny split-K GEMM
# (weight-only numerics; before: fp8 quantize x + torch._scaled_mm, int8 / int4 dequantize + cuBLAS), and router
# gates through it (issue 12's OLMoE bs-64 fp8 ratio; issue 16's bs-64 rows).
# 1. GPU tests: tests/test_skinny_gemm.py, tests/test_quant_gpu.py.
# 2. scripts/bench_skinny.py --formats fp8 int8 int4 on the engine's dense shapes at T = 8 / 16 / 64.
# 3. scripts/step_probe.py: before / after in the graphed decode step (fp8 OLMoE bs 16 / 64, int4 Mixtral bs 16,
#    bf16 routers: OLMoE bs 16 / 64, DeepSeek-V2-Lite bs 64).
# Usage (device tool, repo root): bash scripts/gpu/session13_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_quant_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
timeout 170 python3 scripts/bench_skinny.py --out $R/skinny --formats fp8 int8 int4 --tokens 8 16 64 \
  --shapes olmoe.qkv olmoe.o qwen3.qkv qwen3.o mixtral.qkv mixtral.o dsv2.q dsv2.shared_down > $R/skinny.txt 2>&1
echo "--- bench rc $?"; grep -v "^#" $R/skinny.txt | cut -c1-120
Q="--variant before:minimoe.qweights.SKINNY_QUANT=False --variant skinny"
RT="--variant before:minimoe.linear.ROUTER_MAX_E=0 --variant skinny"
for job in "fp8:olmoe:16 64:$Q" "none:olmoe:16 64:$RT" "none:deepseek-v2-lite:64:$RT" "int4:mixtral:16:$Q"; do
  IFS=: read q m b v <<< "$job"
  [ $SECONDS -gt 480 ] && { echo "$q $m: skipped (time)"; continue; }
  timeout 100 python3 scripts/step_probe.py --quant $q --models $m --batches $b $v --json $R/step_${q}_$m.json \
    > $R/step_${q}_$m.txt 2>&1
  echo "--- $q $m rc $?"; grep -v "^#" $R/step_${q}_$m.txt | tail -4
done
tar czf $OUT/r.tgz -C $OUT r
