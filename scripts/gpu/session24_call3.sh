#!/usr/bin/env bash
# Session 24, call 3 on nvidia-h200 (~8 min): DeepSeek's fp32 router at 17-64 tokens as three bf16 parts on the
# tensor cores (skinny_gemm split3; call 2's PDL-off profile: 10.6 µs a layer at bs 64, against 4.8 for OLMoE's bf16
# gate of the same shape).
#  1. tests/test_skinny_gemm.py on the GPU (split3 in bf16 against float64), the DeepSeek cards' graphed == eager;
#  2. the graphed step, DeepSeek-V2-Lite bs 64 / 32 / 17: split3 (base) vs the fp32 CUDA-core dot (fp32), and two
#     other split3 tiles;
#  3. bench.py DeepSeek-V2-Lite bs 64 and bs 16 with this code (the pair join of call 2 and split3 on).
# Usage (device tool, repo root): bash scripts/gpu/session24_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_gpu.py -k "skinny or split3 or parts or deepseek" \
  > $R/pytest_split3.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_split3.txt
L=minimoe.linear.ROUTER_SPLIT3_TILES
timeout 220 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 64 32 17 --variant base \
  --variant fp32:minimoe.kernels.skinny_gemm.SPLIT3_BF16=False \
  --variant "k128s16:$L={'BLOCK_N': 16, 'BLOCK_K': 128, 'SPLIT': 16}" \
  --variant "n32:$L={'BLOCK_N': 32, 'BLOCK_K': 256, 'SPLIT': 8}" --rounds 3 --steps 30 \
  --json $R/step_split3.json > $R/step_split3.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_split3.txt | tail -13
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py --model deepseek-v2-lite $W --bs 64 --json $R/bench_dsv2_64.json > $R/bench_dsv2_64.txt 2>&1
echo "--- bench dsv2 64 rc $?"; grep "minimoe bs" $R/bench_dsv2_64.txt
python3 -c "import json;c=json.load(open('$R/bench_dsv2_64.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
[ $SECONDS -lt 500 ] && { timeout 80 python3 bench.py --model deepseek-v2-lite $W --bs 16 --ceilings $R/ceil.json \
  --json $R/bench_dsv2_16.json > $R/bench_dsv2_16.txt 2>&1; echo "--- bench dsv2 16 rc $?"; grep "minimoe bs" $R/bench_dsv2_16.txt; }
tar czf $OUT/r.tgz -C $OUT r
