#!/usr/bin/env bash
# Session 16, call 3 on nvidia-h200 (~8 min): the defaults after call 2 (int4 and int8 experts chained over four words,
# int4's GEMM1 at T = 1 on the wide 4 x 1024 tile for every width; dense int8 / fp8 one word).
#  1. graphed bs-1 step, same machine: Mixtral int4 new vs call 1's defaults (chain 1, the 32 x 256 tile);
#     Mixtral int8 experts chained vs not;
#  2. the int4 layer at M = 1 (bench.py --layer; the 55 µs);
#  3. bench.py Mixtral bs 1, 128 / 128: bf16, int4, int8 (issue 12's rows).
# Usage (device tool, repo root): bash scripts/gpu/session16_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
C=minimoe.kernels.fused_moe_quant_pair.CHAIN
timeout 150 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 1 \
  --variant new --variant "old:$C={4: 1, 8: 1, 0: 1}" --rounds 3 --steps 20 \
  --json $R/step_mixtral_int4.json > $R/step_mixtral_int4.txt 2>&1
echo "--- probe int4 rc $?"; grep -v "^#" $R/step_mixtral_int4.txt | tail -3
timeout 120 python3 scripts/step_probe.py --quant int8 --models mixtral --batches 1 \
  --variant new --variant "c1:$C={4: 4, 8: 1, 0: 1}" --rounds 3 --steps 20 \
  --json $R/step_mixtral_int8.json > $R/step_mixtral_int8.txt 2>&1
echo "--- probe int8 rc $?"; grep -v "^#" $R/step_mixtral_int8.txt | tail -3
timeout 50 python3 bench.py --layer --quant int4 --shapes mixtral-8x7b --tokens 1 2 \
  --paths fused --json $R/layer_int4.json > $R/layer_int4.txt 2>&1
grep -E "^mixtral" $R/layer_int4.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 80 python3 bench.py --model mixtral $W --bs 1 --json $R/mixtral_none.json > $R/mixtral_none.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_none.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for q in int4 int8; do
  [ $SECONDS -gt 500 ] && { echo "mixtral $q: skipped (time)"; continue; }
  timeout 80 python3 bench.py --model mixtral $W --bs 1 --quant $q --ceilings $R/ceil.json \
    --json $R/mixtral_$q.json > $R/mixtral_$q.txt 2>&1
done
for f in $R/mixtral_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
tar czf $OUT/r.tgz -C $OUT r
