#!/usr/bin/env bash
# Session 10, call 7 on nvidia-h200 (~3 min), after the review (`--fuse-shared` at one token only):
# GPU tests test_gpu.py -k "fused_shared or pdl", test_shared_fusion.py, test_gemv.py -k model_equals; then
# DeepSeek-V2-Lite and Qwen1.5-MoE bs 1 / 2, 128 / 128 (bs 2 now runs the shared expert apart).
# Usage (device tool, repo root): bash scripts/gpu/session10_call7.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_shared_fusion.py tests/test_gemv.py -k "fused_shared or pdl or shared_fusion or kernel or fits or settings or model_equals" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 2"
for m in deepseek-v2-lite qwen1.5-moe; do
  timeout 70 python3 bench.py --model $m $W --json $R/${m}.json > $R/${m}.txt 2>&1
  echo "$m: $(grep -h 'minimoe bs' $R/${m}.txt | awk '{print $2, $5, $8}' | tr '\n' ' ')"
done
tar czf $OUT/r.tgz -C $OUT r
