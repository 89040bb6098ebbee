#!/usr/bin/env bash
# Session 13, call 1 on nvidia-h200 (~9 min): tiles for the quantized tensor-core MoE path (issue 12's bs-64 fp8 rows).
# 1. scripts/tune_fused_moe_quant.py: fp8 tiles for the OLMoE and Qwen3-30B-A3B shapes from 4 to 4096 tokens,
#    each candidate checked against the W8A8 oracle, the default always a candidate; tables written into configs/.
# 2. bench.py OLMoE bs 64 bf16 then fp8 (128 / 128) reading those tables (issue 12: >= 1.6x bf16).
# 3. the Qwen3-30B-A3B fp8 layer at M = 1 / 64 (targets <= 15 / <= 150 µs).
# Usage (device tool, repo root): bash scripts/gpu/session13_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 330 python3 scripts/tune_fused_moe_quant.py --presets olmoe qwen3 --write --out $R/tune \
  > $R/tune.txt 2>&1
echo "--- tune rc $?"; grep -E "^# (best|precompiled|[0-9]+ rows)" $R/tune.txt
cp minimoe/kernels/configs/*fp8_w8a8* $R/ 2>/dev/null
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
PYTHONPATH=$PWD timeout 100 python3 bench.py --model olmoe $W --bs 64 --json $R/olmoe64_bf16.json > $R/olmoe64_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe64_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
PYTHONPATH=$PWD timeout 100 python3 bench.py --model olmoe $W --bs 64 --quant fp8 --ceilings $R/ceil.json \
  --json $R/olmoe64_fp8.json > $R/olmoe64_fp8.txt 2>&1
for f in $R/olmoe64_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
[ $SECONDS -lt 520 ] && PYTHONPATH=$PWD timeout 70 python3 bench.py --layer --quant fp8 --shapes qwen3-30b-a3b \
  --tokens 1 64 --paths fused --json $R/layer_qwen3_fp8.json > $R/layer_qwen3_fp8.txt 2>&1
grep -E "^qwen3" $R/layer_qwen3_fp8.txt
tar czf $OUT/r.tgz -C $OUT r
