#!/usr/bin/env bash
# Twentieth session, call 1 (was pending_h200.sh, left by the nineteenth session; ~5 min):
#  1. GEMM2 with one warp at T = 1 on the narrow experts (Qwen3-30B-A3B -1.15% a step in call 5, OLMoE -0.2%), then
#     bench.py bs 1 with each model's fastest tile beside the defaults (scripts/bench_tile.py --best-of);
#  2. the decode GEMVs' tiles at T = 2 (bs 2) on OLMoE and Qwen3, which the nineteenth session did not try (the shared-
#     expert models' T = 2 rows are in its call 2: nothing beat the rule by more than 0.8%);
#  3. int4's narrow-expert GEMM1 tile at T = 1 (fused_moe_quant_pair._NARROW_INT4_UP, from one-layer sweeps) in the step;
#  4. every GPU test (call 8 of the nineteenth session was cut after 158 of them).
# Usage (device tool, repo root): bash scripts/gpu/session20_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
S=minimoe.kernels.small_configs.SMALL_TILES
v() { echo "--variant $1:$S={None:$2}"; }
for m in qwen3 olmoe; do
  timeout 60 python3 scripts/step_probe.py --models $m --batches 1 --variant base \
    $(v g2_w1 "{'down':{'num_warps':1}}") $(v g2_w1_s4 "{'down':{'num_warps':1,'num_stages':4}}") \
    $(v g2_2x1024_w1 "{'down':{'BLOCK_N':2,'num_warps':1}}") \
    --rounds 3 --steps 40 --json $R/step1_$m.json > $R/step1_$m.txt 2>&1
  echo "--- probe bs 1 $m rc $?"; grep -v "^#" $R/step1_$m.txt | tail -4
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model qwen3 $W --json $R/bench_qwen3_base.json > $R/bench_qwen3_base.txt 2>&1
python3 -c "import json;c=json.load(open('$R/bench_qwen3_base.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 60 python3 bench.py --model olmoe $W --ceilings $R/ceil.json --json $R/bench_olmoe_base.json > $R/bench_olmoe_base.txt 2>&1
for m in qwen3 olmoe; do
  timeout 60 python3 scripts/bench_tile.py --best-of $R/step1_$m.json --min-gain 0.7 --model $m $W \
    --ceilings $R/ceil.json --json $R/bench_${m}_best.json > $R/bench_${m}_best.txt 2>&1
done
for f in $R/bench_*.txt; do echo "$(basename $f): $(grep -h 'bench_tile\|minimoe bs' $f | tr '\n' '|')"; done
for m in olmoe qwen3; do
  [ $SECONDS -gt 330 ] && { echo "probe bs 2 $m: skipped (time)"; continue; }
  timeout 60 python3 scripts/step_probe.py --models $m --batches 2 --variant base \
    $(v g1_2x2048 "{'BLOCK_N':2,'BLOCK_K':2048}") $(v g1_4x2048 "{'BLOCK_N':4,'BLOCK_K':2048}") \
    $(v g2_4x1024_w2 "{'down':{'BLOCK_N':4,'BLOCK_K':1024,'num_warps':2}}") $(v g2_s4 "{'down':{'num_stages':4}}") \
    --rounds 2 --steps 40 --json $R/step2_$m.json > $R/step2_$m.txt 2>&1
  echo "--- probe bs 2 $m rc $?"; grep -v "^#" $R/step2_$m.txt | tail -5
done
P=minimoe.kernels.fused_moe_quant_pair._NARROW_INT4_UP
[ $SECONDS -lt 400 ] && timeout 80 python3 scripts/step_probe.py --models qwen3 --quant int4 --batches 1 --variant base \
  --variant "w1:$P=(4,1024,1,1,True,True)" --variant "8x1024:$P=(8,1024,2,1,True,True)" \
  --variant "2x1024:$P=(2,1024,2,1,True,True)" --variant "s2:$P=(4,1024,2,2,True,True)" \
  --rounds 2 --steps 40 --json $R/step_int4_qwen3.json > $R/step_int4_qwen3.txt 2>&1
echo "--- probe int4 qwen3 rc $?"; grep -v "^#" $R/step_int4_qwen3.txt | tail -5
timeout 150 python3 -m pytest -q -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
