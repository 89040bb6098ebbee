#!/usr/bin/env bash
# Session 13, call 3 on nvidia-h200 (~9 min): the split-K skinny GEMM (kernels/skinny_gemm.py) for dense layers and
# routers at batch 3-64 against cuBLAS (issue 16's bs-64 targets: OLMoE 15,000, DeepSeek-V2-Lite 6,800 out tok/s).
# 1. GPU tests (bf16, graph replay, the persistent counters left zeroed).
# 2. scripts/bench_skinny.py: the engine's dense shapes at T = 4 / 16 / 64, cuBLAS vs the default vs a tile sweep.
# 3. scripts/step_probe.py: cuBLAS vs skinny (linear.SKINNY_AUTO) in the graphed decode step, interleaved.
# Usage (device tool, repo root): bash scripts/gpu/session13_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
timeout 200 python3 scripts/bench_skinny.py --out $R/skinny > $R/skinny.txt 2>&1
echo "--- bench rc $?"; grep -v "^#" $R/skinny.txt | cut -c1-150
V="--variant cublas --variant skinny:minimoe.linear.SKINNY_AUTO=True"
for mb in olmoe:16,64 deepseek-v2-lite:64 qwen3:64; do
  m=${mb%:*}; b=${mb#*:}
  [ $SECONDS -gt 470 ] && { echo "$m: skipped (time)"; continue; }
  timeout 120 python3 scripts/step_probe.py --models $m --batches ${b//,/ } $V --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -5
done
tar czf $OUT/r.tgz -C $OUT r
