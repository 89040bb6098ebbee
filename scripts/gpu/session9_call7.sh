#!/usr/bin/env bash
# Session 9, call 7 on nvidia-h200 (~4 min): PDL (now the default on one sm90+ GPU) with quantized weights, the
# quantized MoE's GEMM2 never launched early: tests/test_quant_gpu.py (graphed == eager, PTX checks), then
# Mixtral-8x7B int4 and OLMoE int4 bs 1 (128 / 64) with `--pdl on` and `--pdl off`, same code and ceilings.
# Usage (device tool, repo root): bash scripts/gpu/session9_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py > $R/pytest_quant_gpu.txt 2>&1
echo "--- quant gpu rc $?"; tail -1 $R/pytest_quant_gpu.txt
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64"
timeout 60 python3 bench.py --model olmoe $C --quant int4 --pdl off --json $R/olmoe_int4_off.json > $R/olmoe_int4_off.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe_int4_off.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 60 python3 bench.py --model olmoe $C --quant int4 --pdl on --ceilings $R/ceil.json --json $R/olmoe_int4_on.json > $R/olmoe_int4_on.txt 2>&1
for p in off on; do
  timeout 85 python3 bench.py --model mixtral $C --quant int4 --pdl $p --ceilings $R/ceil.json --json $R/mixtral_int4_$p.json > $R/mixtral_int4_$p.txt 2>&1
done
for f in $R/*_int4_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
tar czf $OUT/r.tgz -C $OUT r
