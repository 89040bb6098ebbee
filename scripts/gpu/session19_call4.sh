#!/usr/bin/env bash
# Nineteenth session, call 4 (~8 min): the decode GEMM2 tile inside the graphed bs-1 step. Call 1 put GEMM2 [4, 1024]
# at -3.0% a step on OLMoE and Qwen3-30B-A3B and [8, 256] x 4 stages at -3.6% on Qwen3 (call 2 tried only GEMM1 tiles);
# then bench.py bs 1 with each model's fastest tile (scripts/bench_tile.py --best-of, >= 1% faster) beside the
# defaults, and the GPU tests of the files this session touched.
# Usage (device tool, repo root): bash scripts/gpu/session19_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
S=minimoe.kernels.small_configs.SMALL_TILES
v() { echo "--variant $1:$S={None:{'down':$2}}"; }
G2="$(v g2_4x1024 "{'BLOCK_N':4,'BLOCK_K':1024}") $(v g2_4x1024_s4 "{'BLOCK_N':4,'BLOCK_K':1024,'num_stages':4}") \
 $(v g2_4x1024_w2 "{'BLOCK_N':4,'BLOCK_K':1024,'num_warps':2}") $(v g2_2x1024 "{'BLOCK_N':2,'BLOCK_K':1024}") \
 $(v g2_8x256_s4 "{'BLOCK_N':8,'BLOCK_K':256,'num_stages':4}") $(v g2_4x512_s4 "{'BLOCK_N':4,'BLOCK_K':512,'num_stages':4}")"
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe; do
  timeout 90 python3 scripts/step_probe.py --models $m --batches 1 --variant base $G2 \
    --rounds 2 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- probe $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -7
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model olmoe $W --json $R/bench_olmoe_base.json > $R/bench_olmoe_base.txt 2>&1
python3 -c "import json;c=json.load(open('$R/bench_olmoe_base.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe; do
  [ $SECONDS -gt 400 ] && { echo "bench $m: skipped (time)"; continue; }
  [ $m != olmoe ] && [ $m != deepseek-v2-lite ] && timeout 60 python3 bench.py --model $m $W --ceilings $R/ceil.json \
    --json $R/bench_${m}_base.json > $R/bench_${m}_base.txt 2>&1
  timeout 60 python3 scripts/bench_tile.py --best-of $R/step_$m.json --min-gain 1.0 --model $m $W \
    --ceilings $R/ceil.json --json $R/bench_${m}_best.json > $R/bench_${m}_best.txt 2>&1
done
for f in $R/bench_*.txt; do echo "$(basename $f): $(grep -h 'bench_tile\|minimoe bs' $f | tr '\n' '|')"; done
[ $SECONDS -lt 430 ] && timeout 170 python3 -m pytest -q -x tests/test_gpu.py tests/test_shared_fusion.py tests/test_fused_moe.py \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
