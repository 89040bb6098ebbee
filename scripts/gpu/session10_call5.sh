#!/usr/bin/env bash
# Session 10, call 5 on nvidia-h200 (~9 min), the session's final code (head_gemv removed):
#  1. GPU tests: test_gpu.py -k "fused_shared or pdl" (graphed == eager, every tiny family, batch 1 / 2 / 4),
#     test_shared_fusion.py, test_gemv.py -k "model_equals or pair";
#  2. README rows: DeepSeek-V2-Lite and Qwen1.5-MoE bs 1 / 16 / 64, 128 / 128, default settings;
#  3. issue 13 with today's code: OLMoE bs 1 intra 25% and skipping a third (scripts/bench_prune.py, 128 / 64);
#  4. issue 12: Mixtral-8x7B int4 bs 1 `--pdl off` / on (the ninth session measured int4 only before its quantized
#     dense layers took PDL) and int8 bs 1 (128 / 64).
# Usage (device tool, repo root): bash scripts/gpu/session10_call5.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_shared_fusion.py tests/test_gemv.py -k "fused_shared or pdl or shared_fusion or kernel or model or fits or settings or pair" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 16 64"
timeout 100 python3 bench.py --model deepseek-v2-lite $W --json $R/models_deepseek-v2-lite_128.json > $R/models_deepseek-v2-lite_128.txt 2>&1
python3 -c "import json;c=json.load(open('$R/models_deepseek-v2-lite_128.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 100 python3 bench.py --model qwen1.5-moe $W --ceilings $R/ceil.json --json $R/models_qwen1.5-moe_128.json > $R/models_qwen1.5-moe_128.txt 2>&1
for m in deepseek-v2-lite qwen1.5-moe; do echo "$m: $(grep -h 'minimoe bs' $R/models_${m}_128.txt | awk '{print $2, $8, $13}' | tr '\n' ' ')"; done
timeout 150 python3 scripts/bench_prune.py --out $R/prune --models olmoe --bs 1 --inter --intra 0.25 --skip 0.3333 --iters 3 --budget-s 120 --ceilings $R/ceil.json > $R/prune.txt 2>&1
echo "--- prune rc $?"; grep -A8 -i "x unpruned\|variant" $R/prune.txt | grep -v Warn | head -12
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64 --ceilings $R/ceil.json"
for q in "int4 off" "int4 on" "int8 on"; do
  set -- $q
  [ $SECONDS -gt 500 ] && { echo "mixtral $1 pdl $2: skipped (time)"; continue; }
  timeout 90 python3 bench.py --model mixtral $C --quant $1 --pdl $2 --json $R/mixtral_$1_$2.json > $R/mixtral_$1_$2.txt 2>&1
  echo "mixtral $1 pdl $2: $(grep -h 'minimoe bs' $R/mixtral_$1_$2.txt | awk '{print $2, $5, $8}')"
done
tar czf $OUT/r.tgz -C $OUT r
