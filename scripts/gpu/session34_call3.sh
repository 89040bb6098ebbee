#!/usr/bin/env bash
# Session 34, call 3 on nvidia-h200 (~9 min): issue 16's item 4, the README's five models x bs 1 / 16 / 64 re-measured
# with this session's code (the thirty-third session's defaults, unchanged), 128 / 128, one set of measured ceilings for
# all rows (OLMoE's run measures them; the others read them with --ceilings).
# Usage (device tool, repo root): bash scripts/gpu/session34_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 110 python3 bench.py --model olmoe $C --bs 1 16 64 --json $R/olmoe.json > $R/olmoe.txt 2>&1
echo "--- olmoe rc $? t=$SECONDS"
python3 -c "import json;c=json.load(open('$R/olmoe.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in qwen3 deepseek-v2-lite qwen1.5-moe mixtral; do
  [ $SECONDS -gt 470 ] && { echo "$m: skipped (time)"; continue; }
  timeout 120 python3 bench.py --model $m $C --bs 1 16 64 --ceilings $R/ceil.json --json $R/$m.json > $R/$m.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"
done
for f in $R/*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr -s ' ' | tr '\n' '|')"; done
tar czf $OUT/r.tgz -C $OUT r
