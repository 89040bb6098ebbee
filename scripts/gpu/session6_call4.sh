#!/usr/bin/env bash
# Session 6, call 4 on nvidia-h200 (~9 min): issue 12 with the packed-pair kernels as the int4 / int8 decode default.
#  1. Mixtral-8x7B bs 1 decode (random weights, 128 in / 64 out): bf16, int4 and int8 (pair), int4 with the previous
#     default (gemv, scripts/bench_variant.py), one after another on the same GPU, ceilings measured once.
#  2. scripts/quant_gpu.py layer: one MoE layer, bf16 and each format in the same CUDA-graph timing.
#  3. tests/test_quant_gpu.py -m gpu (graphed == eager with int4 / fp8, the pair PTX against its oracle).
# Usage (device tool, repo root): bash scripts/gpu/session6_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
B="--model mixtral --fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64"
timeout 75 python3 bench.py $B --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for q in int4 int8; do
  timeout 80 python3 bench.py $B --quant $q --ceilings $R/ceil.json --json $R/mixtral_${q}_pair.json > $R/mixtral_${q}_pair.txt 2>&1
done
timeout 80 python3 scripts/bench_variant.py --decode-variant gemv -- $B --quant int4 --ceilings $R/ceil.json \
  --json $R/mixtral_int4_gemv.json > $R/mixtral_int4_gemv.txt 2>&1
timeout 100 python3 scripts/quant_gpu.py layer --out $R/layer > $R/layer.txt 2>&1
timeout 150 python3 -m pytest -q -m gpu tests/test_quant_gpu.py > $R/pytest_gpu.txt 2>&1
tar czf $OUT/results.tgz -C $OUT r
grep -h "minimoe bs\|error\|Error" $R/mixtral_*.txt | head -20
tail -25 $R/layer.txt
tail -5 $R/pytest_gpu.txt
