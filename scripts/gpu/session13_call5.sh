#!/usr/bin/env bash
# Session 13, call 5 on nvidia-h200 (~7 min): the skinny GEMM's retuned defaults and fp8's 32-row cut-over, then
# whole-model rows with them (issue 12: OLMoE bs 64 fp8 vs bf16; Mixtral bs 16 int8 / int4 vs bf16).
# 1. tests/test_skinny_gemm.py on the GPU.
# 2. scripts/bench_skinny.py --formats fp8 int8 int4 at T = 16 / 64 (OLMoE and Mixtral q/k/v and o).
# 3. scripts/step_probe.py --quant fp8: OLMoE bs 16 / 64, before (SKINNY_QUANT off) / after.
# 4. bench.py (128 / 128): OLMoE bs 64 bf16 then fp8; Mixtral bs 16 bf16, int8, int4.
# Usage (device tool, repo root): bash scripts/gpu/session13_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
timeout 100 python3 scripts/bench_skinny.py --out $R/skinny --formats fp8 int8 int4 --tokens 16 64 \
  --shapes olmoe.qkv olmoe.o mixtral.qkv mixtral.o > $R/skinny.txt 2>&1
echo "--- bench rc $?"; grep -v "^#" $R/skinny.txt | cut -c1-118
timeout 100 python3 scripts/step_probe.py --quant fp8 --models olmoe --batches 16 64 \
  --variant before:minimoe.qweights.SKINNY_QUANT=False --variant skinny --json $R/step_fp8_olmoe.json > $R/step_fp8_olmoe.txt 2>&1
echo "--- step rc $?"; grep -v "^#" $R/step_fp8_olmoe.txt | tail -4
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 100 python3 bench.py --model olmoe $W --bs 64 --json $R/olmoe64_bf16.json > $R/olmoe64_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe64_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 100 python3 bench.py --model olmoe $W --bs 64 --quant fp8 --ceilings $R/ceil.json --json $R/olmoe64_fp8.json \
  > $R/olmoe64_fp8.txt 2>&1
for q in none int8 int4; do
  [ $SECONDS -gt 500 ] && { echo "mixtral $q: skipped (time)"; continue; }
  timeout 110 python3 bench.py --model mixtral $W --bs 16 --quant $q --ceilings $R/ceil.json --json $R/mixtral16_$q.json \
    > $R/mixtral16_$q.txt 2>&1
done
for f in $R/olmoe64_*.txt $R/mixtral16_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
tar czf $OUT/r.tgz -C $OUT r
