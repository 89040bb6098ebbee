#!/usr/bin/env bash
# Session 23, call 2 on nvidia-h200 (~8 min): the shared expert inside the aligned fused MoE (virtual experts,
# shared_fusion.ALIGNED_MAX_T; apart before: cuBLAS GEMM, SiLU*up, split-K GEMM + reduce, add: ~20 µs a
# DeepSeek-V2-Lite layer at bs 64 in call 1's profile)
#  1. tests/test_shared_fusion.py on the GPU (fp32 / fp16 kernels against the float64 loop; tiny models fused == apart);
#  2. the graphed decode step, fused (base) against apart (ALIGNED_MAX_T = 0): DeepSeek-V2-Lite and Qwen1.5-MoE at
#     bs 16 / 64 (and bs 4, the smallest aligned batch for DeepSeek-V2-Lite);
#  3. bench.py bs 64 for both with the new default, and bs 16 for DeepSeek-V2-Lite.
# Usage (device tool, repo root): bash scripts/gpu/session23_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_shared_fusion.py > $R/pytest_shared.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_shared.txt
timeout 250 python3 scripts/step_probe.py --models deepseek-v2-lite qwen1.5-moe --batches 4 16 64 --variant base \
  --variant apart:minimoe.shared_fusion.ALIGNED_MAX_T=0 --rounds 3 --steps 30 \
  --json $R/step_shared.json > $R/step_shared.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_shared.txt | tail -14
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 80 python3 bench.py --model deepseek-v2-lite $W --bs 64 --json $R/bench_dsv2_64.json > $R/bench_dsv2_64.txt 2>&1
echo "--- bench dsv2 64 rc $?"; grep "minimoe bs" $R/bench_dsv2_64.txt
python3 -c "import json;c=json.load(open('$R/bench_dsv2_64.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
[ $SECONDS -lt 480 ] && { timeout 80 python3 bench.py --model qwen1.5-moe $W --bs 64 --ceilings $R/ceil.json \
  --json $R/bench_qwen15_64.json > $R/bench_qwen15_64.txt 2>&1; echo "--- bench qwen1.5 64 rc $?"; grep "minimoe bs" $R/bench_qwen15_64.txt; }
[ $SECONDS -lt 520 ] && { timeout 70 python3 bench.py --model deepseek-v2-lite $W --bs 16 --ceilings $R/ceil.json \
  --json $R/bench_dsv2_16.json > $R/bench_dsv2_16.txt 2>&1; echo "--- bench dsv2 16 rc $?"; grep "minimoe bs" $R/bench_dsv2_16.txt; }
tar czf $OUT/r.tgz -C $OUT r
