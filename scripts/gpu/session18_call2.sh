#!/usr/bin/env bash
# Session 18, call 2 on nvidia-h200 (~9 min): issue 16's item 4, the README's five models x bs 1 / 16 / 64 re-measured with
# the code as of the eighteenth session (5bb4890), 128 / 128, one set of measured ceilings for all rows, and
# Mixtral bs 16 int8 / int4 beside bf16 in the same call (the fourteenth session compared int4 across two machines).
# Usage (device tool, repo root): bash scripts/gpu/session18_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 100 python3 bench.py --model olmoe $C --bs 1 16 64 --json $R/olmoe.json > $R/olmoe.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in qwen3 deepseek-v2-lite qwen1.5-moe mixtral; do
  [ $SECONDS -gt 420 ] && { echo "$m: skipped (time)"; continue; }
  timeout 110 python3 bench.py --model $m $C --bs 1 16 64 --ceilings $R/ceil.json --json $R/$m.json > $R/$m.txt 2>&1
done
for q in int8 int4; do
  [ $SECONDS -gt 520 ] && { echo "mixtral $q: skipped (time)"; continue; }
  timeout 60 python3 bench.py --model mixtral $C --bs 16 --quant $q --ceilings $R/ceil.json --json $R/mixtral16_$q.json \
    > $R/mixtral16_$q.txt 2>&1
done
for f in $R/*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
tar czf $OUT/r.tgz -C $OUT r
