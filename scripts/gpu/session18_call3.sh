#!/usr/bin/env bash
# Session 18, call 3 on nvidia-h200 (~9 min): what the twelfth to fifteenth sessions left for a one-GPU call:
#  0. GPU tests of the skinny GEMM, the byte tiles and the biased int4 operands (kept as a guard);
#  1. the int4 prefill cut-over (moe_dequant.DEQUANT_MIN_M: measured on Mixtral only) on the narrow experts of OLMoE
#     and Qwen3-30B-A3B, and the biased path on the MoE's 64-row tiles (Mixtral at 160 tokens: fused_moe_quant.
#     BIASED_MAX_M is 32 until measured) (scripts/int4_paths.py);
#  2. issue 12's whole-model rows, bf16 in the same run: Mixtral bs 1 --quant int8 / int4 / fp8 (128 / 128; int4 and
#     int8 were measured in the sixteenth session, call 3: kept here for fp8 and one run of all three) and OLMoE
#     bs 64 --quant fp8 (1.37x in the thirteenth session, target 1.6x);
#  3. the fp8 layer at M = 1 / 64 for the Qwen3-30B-A3B shape (targets <= 15 / <= 150 µs).
# Usage (device tool, repo root): bash scripts/gpu/session18_call3.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_quant_kernels.py \
  tests/test_quant_pair.py tests/test_quant_gpu.py -k "skinny or byte or tuned or biased or chain or pair_ptx" \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
PYTHONPATH=$PWD timeout 60 python3 scripts/int4_paths.py --shape mixtral-8x7b --tokens 160 --json $R/int4_paths_m160.json \
  > $R/int4_paths_m160.txt 2>&1
echo "--- int4 paths mixtral 160 rc $?"; tail -2 $R/int4_paths_m160.txt
for shape in olmoe qwen3-30b-a3b; do
  PYTHONPATH=$PWD timeout 80 python3 scripts/int4_paths.py --shape $shape --tokens 64 256 512 1024 4096 \
    --json $R/int4_paths_$shape.json > $R/int4_paths_$shape.txt 2>&1
  echo "--- int4 paths $shape rc $?"; tail -6 $R/int4_paths_$shape.txt
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
PYTHONPATH=$PWD timeout 90 python3 bench.py --model mixtral $W --bs 1 --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for q in int8 int4 fp8; do
  [ $SECONDS -gt 450 ] && { echo "mixtral $q: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 90 python3 bench.py --model mixtral $W --bs 1 --quant $q --ceilings $R/ceil.json \
    --json $R/mixtral_$q.json > $R/mixtral_$q.txt 2>&1
done
for q in none fp8; do
  [ $SECONDS -gt 500 ] && { echo "olmoe $q: skipped (time)"; continue; }
  PYTHONPATH=$PWD timeout 100 python3 bench.py --model olmoe $W --bs 64 --quant $q --ceilings $R/ceil.json \
    --json $R/olmoe64_$q.json > $R/olmoe64_$q.txt 2>&1
done
[ $SECONDS -lt 540 ] && PYTHONPATH=$PWD timeout 50 python3 bench.py --layer --quant fp8 --shapes qwen3-30b-a3b \
  --tokens 1 64 --paths fused --json $R/layer_qwen3_fp8.json > $R/layer_qwen3_fp8.txt 2>&1
for f in $R/mixtral_*.txt $R/olmoe64_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
grep -E "^qwen3" $R/layer_qwen3_fp8.txt
tar czf $OUT/r.tgz -C $OUT r
