#!/usr/bin/env bash
# Session 9, call 8 on nvidia-h200 (~3 min): the quantized dense decode layers (int4 / int8 q/k/v, o; their x-packing
# kernel) now take RunSettings.pdl like the bf16 ones: tests/test_quant_gpu.py, then OLMoE and Qwen3-30B-A3B int4
# bs 1 (128 / 64) with `--pdl off` and `--pdl on`, same code, same ceilings.
# Usage (device tool, repo root): bash scripts/gpu/session9_call8.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py > $R/pytest_quant_gpu.txt 2>&1
echo "--- quant gpu rc $?"; tail -1 $R/pytest_quant_gpu.txt
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64 --quant int4"
timeout 50 python3 bench.py --model olmoe $C --pdl off --json $R/olmoe_int4_off.json > $R/olmoe_int4_off.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe_int4_off.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 50 python3 bench.py --model olmoe $C --pdl on --ceilings $R/ceil.json --json $R/olmoe_int4_on.json > $R/olmoe_int4_on.txt 2>&1
for p in off on; do
  timeout 60 python3 bench.py --model qwen3 $C --pdl $p --ceilings $R/ceil.json --json $R/qwen3_int4_$p.json > $R/qwen3_int4_$p.txt 2>&1
done
for f in $R/*_int4_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f)"; done
tar czf $OUT/r.tgz -C $OUT r
