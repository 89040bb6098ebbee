#!/usr/bin/env bash
# Session 23, call 3 on nvidia-h200 (~9 min; carry .whl: bitsandbytes 0.50.2): issue 12's rows on today's code, in
# one run, for its closing note
#  1. the bitsandbytes paths where the package imports (nf4 / bnb-int8 cases of the quant tests) and the quantized
#     GPU tests (graphed decode == eager);
#  2. one MoE layer, bf16 beside each format in the same CUDA-graph timing (scripts/quant_gpu.py layer: Mixtral M = 1
#     int4 / int8 / nf4, Qwen3-30B-A3B fp8 M = 1 / 64, OLMoE fp8 M = 64);
#  3. Mixtral-8x7B bs 1, 128 / 128, one set of ceilings: bf16, int8, int8 --quant-lm-head, int4, fp8 (3 iterations),
#     nf4 and bnb-int8 (1 iteration, 32 out): ITL and peak memory per format;
#  4. the kernel profile of the Mixtral int4 and fp8 bs-1 steps (scripts/profile_step.py).
# Usage (device tool, repo root, carry [".whl"]): bash scripts/gpu/session23_call3.sh
set -u
cp -r .whl/site /tmp/site || exit 1   # bitsandbytes 0.50.2 unpacked, only its CUDA 13.0 and CPU libraries (the wheel is 43 MB)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
python3 -c "import bitsandbytes, torch, triton; print('bitsandbytes', bitsandbytes.__version__, torch.__version__, triton.__version__)" >> $R/gpu.txt 2>&1
tail -1 $R/gpu.txt
timeout 100 python3 -m pytest -q -p no:cacheprovider -rs tests/test_quant_formats.py tests/test_quant_kernels.py \
  tests/test_quant_model.py tests/test_quant_gpu.py -k "nf4 or bnb or gpu or graph" > $R/pytest_quant.txt 2>&1
echo "--- pytest quant rc $?"; tail -3 $R/pytest_quant.txt
timeout 100 python3 scripts/quant_gpu.py layer --out $R > $R/layer.txt 2>&1; echo "--- layer rc $?"; grep -v "^{" $R/layer.txt | tail -12
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 80 python3 bench.py --model mixtral $W --bs 1 --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for spec in "int8 --quant int8" "int8_lmhead --quant int8 --quant-lm-head" "int4 --quant int4" "fp8 --quant fp8"; do
  set -- $spec; name=$1; shift
  [ $SECONDS -gt 400 ] && { echo "mixtral $name: skipped (time)"; continue; }
  timeout 80 python3 bench.py --model mixtral $W --bs 1 "$@" --ceilings $R/ceil.json --json $R/mixtral_$name.json \
    > $R/mixtral_$name.txt 2>&1
done
for q in nf4 bnb-int8; do
  [ $SECONDS -gt 470 ] && { echo "mixtral $q: skipped (time)"; continue; }
  timeout 70 python3 bench.py --model mixtral --fused --warmup 1 --iters 1 --input-len 128 --output-len 32 --bs 1 \
    --quant $q --ceilings $R/ceil.json --json $R/mixtral_$q.json > $R/mixtral_$q.txt 2>&1
done
grep -h "minimoe bs\|quant=" $R/mixtral_*.txt | grep -o "quant=[a-z0-9-]* quant_lm_head=[A-Za-z]*\|minimoe bs1.*" | paste - - | head -10
[ $SECONDS -lt 500 ] && { timeout 60 python3 scripts/profile_step.py --model mixtral --bs 1 --quant int4 --steps 10 \
  --json $R/prof_mixtral_int4.json > $R/prof_mixtral_int4.txt 2>&1; echo "--- prof int4 rc $?"; }
[ $SECONDS -lt 545 ] && { timeout 50 python3 scripts/profile_step.py --model qwen3 --bs 1 --quant fp8 --steps 10 \
  --json $R/prof_qwen3_fp8.json > $R/prof_qwen3_fp8.txt 2>&1; echo "--- prof qwen3 fp8 rc $?"; }
tar czf $OUT/r.tgz -C $OUT r
