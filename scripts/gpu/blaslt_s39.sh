#!/usr/bin/env bash
# Thirty-ninth session, call 2: cuBLASLt instead of cuBLAS for the dense layers (linear.BLAS_LIBRARY, a probe knob).
# At OLMoE bs 64 the q/k/v GEMM takes 9.4 µs for 6 µs of bytes and the o GEMM 6.0 for 2 (thirty-eighth session, call 4).
# (1) the graphed decode step, cublas / cublaslt interleaved (OLMoE, Qwen3-30B-A3B, Mixtral at bs 64; OLMoE bs 16);
# (2) bench.py OLMoE bs 64 with each; (3) the bs-64 kernel table with cublaslt.
# Usage (device tool, repo root, nvidia-h200, ~6 min): bash scripts/gpu/blaslt_s39.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V="--variant base:minimoe.linear.BLAS_LIBRARY='cublas' --variant lt:minimoe.linear.BLAS_LIBRARY='cublaslt'"
timeout 240 python3 scripts/step_probe.py --models olmoe qwen3 mixtral --batches 64 --input-len 128 --steps 60 --rounds 3 \
  $V --json $R/probe64.json > $R/probe64.txt 2>&1
echo "--- probe64 rc $? t=$SECONDS"; grep -v Warn $R/probe64.txt | tail -8
timeout 100 python3 scripts/step_probe.py --models olmoe --batches 16 --input-len 128 --steps 60 --rounds 3 \
  $V --json $R/probe16.json > $R/probe16.txt 2>&1
echo "--- probe16 rc $? t=$SECONDS"; grep -v Warn $R/probe16.txt | tail -3
for v in cublas cublaslt; do
  timeout 100 python3 -c "
import runpy, sys
import minimoe.linear as l
l.BLAS_LIBRARY = '$v'
sys.argv = ['bench.py', '--model', 'olmoe', '--fused', '--bs', '64', '--input-len', '128', '--output-len', '128',
            '--warmup', '1', '--iters', '3', '--json', '$R/bench_olmoe64_$v.json']
runpy.run_path('bench.py', run_name='__main__')" > $R/bench_olmoe64_$v.txt 2>&1
  echo "--- bench $v rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_olmoe64_$v.txt
done
timeout 90 python3 -c "
import sys, runpy
import minimoe.linear as l
l.BLAS_LIBRARY = 'cublaslt'
sys.argv = ['profile_step.py', '--model', 'olmoe', '--bs', '64', '--steps', '20', '--json', '$R/prof_lt.json']
runpy.run_path('scripts/profile_step.py', run_name='__main__')" > $R/prof_lt.txt 2>&1
echo "--- profile rc $? t=$SECONDS"; grep -A16 "one layer in launch order" $R/prof_lt.txt
tar czf $OUT/r.tgz -C $OUT r
