#!/usr/bin/env bash
# Twentieth session, call 5 (~6 min): the attention RMSNorm packing the quantized q/k/v projection's input
# (minimoe/prepack.py, on by default) against a separate pack launch, inside the graphed bs-1 step (Mixtral-8x7B int8
# and int4; scripts/step_probe.py, PREPACK flipped); bench.py Mixtral int8 bs 1 with it, and with --quant-lm-head;
# the new and touched GPU tests.
# Usage (device tool, repo root): bash scripts/gpu/session20_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 100 python3 -m pytest -q -m gpu tests/test_prepack.py tests/test_quant_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
for q in int8 int4; do
  timeout 110 python3 scripts/step_probe.py --models mixtral --quant $q --batches 1 --variant base \
    "--variant=no_prepack:minimoe.prepack.PREPACK=False" --rounds 3 --steps 40 \
    --json $R/step_mixtral_$q.json > $R/step_mixtral_$q.txt 2>&1
  echo "--- probe mixtral $q rc $?"; grep -v "^#" $R/step_mixtral_$q.txt | tail -2
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 90 python3 bench.py --model mixtral --quant int8 $W --json $R/bench_int8.json > $R/bench_int8.txt 2>&1
python3 -c "import json;c=json.load(open('$R/bench_int8.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
[ $SECONDS -lt 420 ] && timeout 90 python3 bench.py --model mixtral --quant int8 --quant-lm-head $W --ceilings $R/ceil.json \
  --json $R/bench_int8_lmhead.json > $R/bench_int8_lmhead.txt 2>&1
for f in $R/bench_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
tar czf $OUT/r.tgz -C $OUT r
