#!/usr/bin/env bash
# Session 6, call 6 on nvidia-h200 (~6 min): issue 12's whole-model rows with the final pair defaults (split-K GEMM2
# for int4): Mixtral-8x7B bs 1 bf16 / int4 (--profile) / int8, then OLMoE and Qwen3-30B-A3B bs 1 bf16 / int4 / int8,
# then scripts/quant_gpu.py layer (one MoE layer, bf16 beside each format in the same timing).
# Usage (device tool, repo root): bash scripts/gpu/session6_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64"
timeout 75 python3 bench.py --model mixtral $C --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 90 python3 bench.py --model mixtral $C --quant int4 --profile --ceilings $R/ceil.json --json $R/mixtral_int4.json > $R/mixtral_int4.txt 2>&1
timeout 80 python3 bench.py --model mixtral $C --quant int8 --ceilings $R/ceil.json --json $R/mixtral_int8.json > $R/mixtral_int8.txt 2>&1
for m in olmoe qwen3; do
  for q in none int4 int8; do
    timeout 45 python3 bench.py --model $m $C --quant $q --ceilings $R/ceil.json --json $R/${m}_$q.json > $R/${m}_$q.txt 2>&1
  done
done
timeout 100 python3 scripts/quant_gpu.py layer --out $R/layer > $R/layer.txt 2>&1
tar czf $OUT/results.tgz -C $OUT r
for f in $R/*.txt; do echo "== $(basename $f)"; grep -h "minimoe bs\|rror" $f | head -3; done
tail -14 $R/layer.txt
grep -A25 -i "profile\|kernel" $R/mixtral_int4.txt | head -40
