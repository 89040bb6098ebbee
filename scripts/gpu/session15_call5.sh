#!/usr/bin/env bash
# Session 15, call 5 on nvidia-h200 (~4 min, the session's last device minutes):
#  0. GPU tests of the prefill dequantization path (tests/test_moe_dequant.py);
#  1. scripts/int4_paths.py: one Mixtral int4 layer at 64-4096 tokens: in-kernel plain / biased, and dequant + bf16;
#  2. bench.py Mixtral int4 and int8 at bs 64 (TTFT: call 4 int4 1.57 s, call 3 int8 0.65 s, bf16 0.38 s).
# Usage (device tool, repo root): bash scripts/gpu/session15_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 60 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_moe_dequant.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt | cut -c1-300
timeout 100 python3 scripts/int4_paths.py --tokens 64 256 1024 4096 --json $R/int4_paths.json > $R/int4_paths.txt 2>&1
echo "--- paths rc $?"; tail -6 $R/int4_paths.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for q in int4 int8; do
  [ $SECONDS -gt 230 ] && { echo "mixtral bs64 $q: skipped (time)"; continue; }
  timeout 70 python3 bench.py --model mixtral $W --bs 64 --quant $q --json $R/mixtral64_$q.json > $R/mixtral64_$q.txt 2>&1
  echo "mixtral bs64 $q: $(grep -h 'minimoe bs' $R/mixtral64_$q.txt)"
done
tar czf $OUT/r.tgz -C $OUT r
