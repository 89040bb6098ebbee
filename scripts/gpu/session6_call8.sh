#!/usr/bin/env bash
# Session 6, call 8 on nvidia-h200 (~5 min): int4 words with one shift instead of three (Marlin's in-place high
# fields: (1024 + 16u)/16 − (64 + z) in one fma) and unmasked GEMM1 loads when D is a multiple of BLOCK_K.
#  1. tests/test_quant_gpu.py (the new PTX against dequantize-then-matmul, |x| ~ 1 and ~100; graphed == eager);
#  2. scripts/pair_tiles.py --bits 4 --tokens 1 (each GEMM alone, Mixtral / Qwen3-30B-A3B / OLMoE);
#  3. Mixtral-8x7B bs 1: bf16 and int4, 128 in / 64 out.
# Usage (device tool, repo root): bash scripts/gpu/session6_call8.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_quant_gpu.py > $R/pytest_gpu.txt 2>&1
timeout 150 python3 scripts/pair_tiles.py --bits 4 --tokens 1 --out $R/tiles > $R/tiles.log 2>&1
C="--model mixtral --fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64"
timeout 75 python3 bench.py $C --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 80 python3 bench.py $C --quant int4 --ceilings $R/ceil.json --json $R/mixtral_int4.json > $R/mixtral_int4.txt 2>&1
tar czf $OUT/results.tgz -C $OUT r
tail -3 $R/pytest_gpu.txt
sed -n '/^# best tile/,$p' $R/tiles.log
grep -E "gate_up  32x256  4w1s xp|<-" $R/tiles.log
grep -h "minimoe bs" $R/mixtral_*.txt
