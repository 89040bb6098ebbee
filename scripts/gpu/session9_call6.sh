#!/usr/bin/env bash
# Session 9, call 6 on nvidia-h200 (~8 min): `--pdl auto` now resolves to on (one sm90+ GPU, no EP / TP):
#  1. GPU tests: tests/test_gpu.py -k pdl (graphed == eager, every family, PDL at batch 1 and 4; the auto rule) and the
#     speculative GPU tests (a whole round in one graph, now with PDL by default);
#  2. the README's five models x bs 1 / 16 / 64, 128 / 128, default settings (models_*.json), then `--pdl off`
#     (old_*.json: the previous default; the batch sizes call 5 did not compare), same code, GPU and ceilings.
# Usage (device tool, repo root): bash scripts/gpu/session9_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k pdl > $R/pytest_gpu.txt 2>&1
echo "--- test_gpu rc $?"; tail -1 $R/pytest_gpu.txt
timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_speculative.py > $R/pytest_spec.txt 2>&1
echo "--- spec rc $?"; tail -1 $R/pytest_spec.txt
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 16 64"
timeout 90 python3 bench.py --model olmoe $B --json $R/models_olmoe_128.json > $R/models_olmoe_128.txt 2>&1
python3 -c "import json;c=json.load(open('$R/models_olmoe_128.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in qwen3 qwen1.5-moe deepseek-v2-lite mixtral; do
  timeout 80 python3 bench.py --model $m $B --ceilings $R/ceil.json --json $R/models_${m}_128.json > $R/models_${m}_128.txt 2>&1
done
grep -h "minimoe bs" $R/models_*.txt | awk '{print $2, $7}' | tr '\n' ' '; echo
for mb in "olmoe 16" "deepseek-v2-lite 16" "qwen3 16 64" "qwen1.5-moe 1 16 64" "mixtral 16 64"; do
  set -- $mb; m=$1; shift
  [ $SECONDS -gt 500 ] && { echo "off $m: skipped (time)"; continue; }
  timeout 80 python3 bench.py --model $m --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs "$@" \
    --pdl off --ceilings $R/ceil.json --json $R/old_${m}_128.json > $R/old_${m}_128.txt 2>&1
  echo "off $m: $(grep -h 'minimoe bs' $R/old_${m}_128.txt | awk '{print $2, $7}' | tr '\n' ' ')"
done
tar czf $OUT/r.tgz -C $OUT r
