#!/usr/bin/env bash
# Session 12, call 6 on nvidia-h200 (~8 min): fp8 now decodes through the pair kernels by default.
# 1. GPU tests (quantized graphed == eager with the new default and with "gemv"; the pair PTX).
# 2. scripts/pair_tiles.py --bits 0: fp8 tiles of each pair GEMM alone (int8's tiles are the default), Qwen3-30B-A3B,
#    OLMoE, Mixtral at T = 1.
# 3. Whole models, bench.py 128 / 128 bs 1: Mixtral bf16 and fp8 (same run), Qwen3-30B-A3B and OLMoE fp8.
# Usage (device tool, repo root): bash scripts/gpu/session12_call6.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py -k "graphed or pair" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
PYTHONPATH=$PWD timeout 150 python3 scripts/pair_tiles.py --bits 0 --shapes qwen3-30b-a3b olmoe mixtral-8x7b --tokens 1 --out $R/tiles > $R/pair_tiles_fp8.txt 2>&1
echo "--- tiles rc $?"; sed -n '/# best tile/,$p' $R/pair_tiles_fp8.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
PYTHONPATH=$PWD timeout 90 python3 bench.py --model mixtral $W --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in mixtral qwen3 olmoe; do
  [ $SECONDS -gt 500 ] && { echo "$m fp8: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 90 python3 bench.py --model $m $W --quant fp8 --ceilings $R/ceil.json --json $R/${m}_fp8.json > $R/${m}_fp8.txt 2>&1
done
for f in $R/mixtral_bf16.txt $R/*_fp8.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
tar czf $OUT/r.tgz -C $OUT r
