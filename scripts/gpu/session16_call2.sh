#!/usr/bin/env bash
# Session 16, call 2 on nvidia-h200 (~9.5 min): call 1 again after the quads load as the [ROWS, V] tile and split
# in registers (call 1 loaded [ROWS, Q, 4], which put one row on each lane: int4 step +29%). The pair decode kernels with fp16 chains of four words
# (kernels/pair_quads.py; int4's default now 4, int8 / fp8 still 1).
#  0. GPU tests: the chained PTX (int4, int4-zero, int8, fp8, fp8-block; chain 1 and 4) against the fp32 oracle;
#  1. the graphed bs-1 step, same machine: Mixtral int4 chain 4 vs 1, Mixtral int8 and fp8 chain 1 vs 4;
#  2. scripts/pair_tiles.py, each GEMM alone, chains 1 and 4: Mixtral and Qwen3-30B-A3B int4 at T = 1 (tiles re-swept);
#  3. the int4 layer at M = 1 (bench.py --layer), the 55 µs target; OLMoE / Qwen3 int4 bs-1 steps.
# Usage (device tool, repo root): bash scripts/gpu/session16_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_quant_gpu.py tests/test_quant_pair.py \
  -k "pair_ptx or chain" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -4 $R/pytest_gpu.txt | cut -c1-300
C=minimoe.kernels.fused_moe_quant_pair.CHAIN
timeout 150 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 1 \
  --variant c4 --variant "c1:$C={4: 1, 8: 1, 0: 1}" --rounds 3 --steps 20 \
  --json $R/step_mixtral_int4.json > $R/step_mixtral_int4.txt 2>&1
echo "--- probe int4 rc $?"; grep -v "^#" $R/step_mixtral_int4.txt | tail -4
for q in int8 fp8; do
  [ $SECONDS -gt 330 ] && { echo "probe $q: skipped (time)"; continue; }
  timeout 120 python3 scripts/step_probe.py --quant $q --models mixtral --batches 1 \
    --variant c1 --variant "c4:$C={4: 4, 8: 4, 0: 4}" --rounds 3 --steps 20 \
    --json $R/step_mixtral_$q.json > $R/step_mixtral_$q.txt 2>&1
  echo "--- probe $q rc $?"; grep -v "^#" $R/step_mixtral_$q.txt | tail -4
done
[ $SECONDS -lt 400 ] && timeout 130 python3 scripts/pair_tiles.py --shapes mixtral-8x7b qwen3-30b-a3b --bits 4 \
  --tokens 1 --chains 1 4 --out $R/tiles > $R/pair_tiles.txt 2>&1
echo "--- tiles rc $?"; grep -A30 "^# best" $R/pair_tiles.txt | grep -v dense
[ $SECONDS -lt 480 ] && timeout 50 python3 bench.py --layer --quant int4 --shapes mixtral-8x7b --tokens 1 2 \
  --paths fused --json $R/layer_int4.json > $R/layer_int4.txt 2>&1
grep -E "^mixtral" $R/layer_int4.txt
if [ $SECONDS -lt 470 ]; then
  timeout $((575 - SECONDS)) python3 scripts/step_probe.py --quant int4 --models olmoe qwen3 --batches 1 \
    --variant c4 --variant "c1:$C={4: 1, 8: 1, 0: 1}" --rounds 3 --steps 20 \
    --json $R/step_small_int4.json > $R/step_small_int4.txt 2>&1
  echo "--- probe small rc $?"; grep -v "^#" $R/step_small_int4.txt | tail -6
fi
tar czf $OUT/r.tgz -C $OUT r
