#!/usr/bin/env bash
# Nineteenth session, call 5 (~4 min): bench.py bs 1 on the five models with small_configs.STEP_TILES as committed
# (calls 3-4's tiles, no bench_tile override), then, if time is left, GEMM2 tiles past call 4's on the narrow experts.
# Usage (device tool, repo root): bash scripts/gpu/session19_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model olmoe $W --json $R/bench_olmoe.json > $R/bench_olmoe.txt 2>&1
python3 -c "import json;c=json.load(open('$R/bench_olmoe.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in qwen3 deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 70 python3 bench.py --model $m $W --ceilings $R/ceil.json --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
done
for f in $R/bench_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
S=minimoe.kernels.small_configs.SMALL_TILES
v() { echo "--variant $1:$S={None:{'down':$2}}"; }
for m in olmoe qwen3; do
  [ $SECONDS -gt 200 ] && { echo "probe $m: skipped (time)"; continue; }
  timeout 60 python3 scripts/step_probe.py --models $m --batches 1 --variant base \
    $(v g2_w1 "{'BLOCK_N':4,'BLOCK_K':1024,'num_warps':1}") $(v g2_8x1024_w2 "{'BLOCK_N':8,'BLOCK_K':1024,'num_warps':2}") \
    $(v g2_2x1024_w1 "{'BLOCK_N':2,'BLOCK_K':1024,'num_warps':1}") \
    --rounds 2 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- probe $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -4
done
tar czf $OUT/r.tgz -C $OUT r
