#!/usr/bin/env bash
# Nineteenth session, call 3 (~9 min):
#  1. small_configs.STEP_TILES (new defaults at T = 1 for DeepSeek-V2-Lite, Qwen1.5-MoE, Mixtral) against the rule's
#     tiles ("rule" variant) inside the graphed step, then bench.py bs 1 rows for the three;
#  2. Mixtral int8 at bs 1 (issue 12: <= 3.8 ms a step, 3.92 now): the dense layers' pair tiles
#     (fused_moe_quant_pair._DENSE[8]) and the experts' (_TILES[(8, 1)]) inside the graphed step;
#  3. the GPU tests of the files this session touched.
# Usage (device tool, repo root): bash scripts/gpu/session19_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
S=minimoe.kernels.small_configs.SMALL_TILES
RULE="--variant rule:$S={None:{'BLOCK_N':4,'BLOCK_K':1024,'num_stages':1,'down':{'BLOCK_N':8,'BLOCK_K':512,'num_stages':3}}}"
for m in deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 100 python3 scripts/step_probe.py --models $m --batches 1 --variant base $RULE \
    --rounds 3 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- probe $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -3
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model olmoe $W --json $R/bench_olmoe.json > $R/bench_olmoe.txt 2>&1
python3 -c "import json;c=json.load(open('$R/bench_olmoe.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 100 python3 bench.py --model $m $W --ceilings $R/ceil.json --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
done
for f in $R/bench_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
P=minimoe.kernels.fused_moe_quant_pair
D4="4:(32,512,4,3,True,False,1)"
d() { echo "--variant $1:$P._DENSE={$D4,8:$2}"; }
t() { echo "--variant $1:$P._TILES={(4,1):((32,256,4,1,True,False),(16,512,1,2,False,False,8)),(4,2):((16,256,2,2,True,False),(16,256,1,3,False,False,8)),(8,1):$2,(8,2):((16,512,4,1,True,False),(4,1024,2,3,False,False,2))}"; }
[ $SECONDS -lt 380 ] && timeout 150 python3 scripts/step_probe.py --models mixtral --quant int8 --batches 1 --variant base \
  $(d d_nopack "(4,1024,2,3,False,False,1)") $(d d_8x1024_w4 "(8,1024,4,3,True,False,1)") \
  $(d d_2x1024_w1 "(2,1024,1,3,True,False,1)") $(d d_4x2048_w4 "(4,2048,4,2,True,False,1)") \
  $(d d_4x512_s4 "(4,512,2,4,True,False,1)") $(d d_16x512_w4 "(16,512,4,3,True,False,1)") \
  $(t g2_8x1024 "((16,512,4,1,False,False),(8,1024,2,3,False,False,1))") \
  $(t g2_4x2048 "((16,512,4,1,False,False),(4,2048,2,2,False,False,1))") \
  $(t g1_8x512 "((8,512,4,1,False,False),(4,1024,2,3,False,False,1))") \
  --rounds 2 --steps 40 --json $R/step_mixtral_int8.json > $R/step_mixtral_int8.txt 2>&1
echo "--- probe mixtral int8 rc $?"; grep -v "^#" $R/step_mixtral_int8.txt | tail -11
[ $SECONDS -lt 470 ] && timeout 110 python3 -m pytest -q -x tests/test_shared_fusion.py tests/test_fused_moe.py tests/test_gpu.py \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
