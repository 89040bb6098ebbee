#!/usr/bin/env bash
# Session 3, H200 call 1 (~6 min): train the shipped small models (4 processes) while the GPU tests run,
# then issue 9's before/after: the landed code (733f27f, unpacked in .baseline/) and this code, same machine.
# Usage (device tool, repo root): bash scripts/gpu/session3_call1.sh   (carry out/stdlib-tokens.safetensors, .baseline)
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt 2>&1
( timeout 300 python3 scripts/train_tiny.py --preset h200 --parallel --tokens out/stdlib-tokens.safetensors \
    --work-dir /tmp/train-state --time-budget-s 200 > $R/train.log 2>&1; echo "train rc=$?" >> $R/train.log ) &
TRAIN=$!
timeout 280 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > $R/gpu_tests.log 2>&1
echo "gpu tests rc=$?" >> $R/gpu_tests.log
wait $TRAIN
for m in olmoe-stdlib mixtral-stdlib qwen3-stdlib-draft; do tar cf $OUT/$m.tar -C models $m 2>/dev/null; done
cp -r docs/train $R/ 2>/dev/null
# issue 9 acceptance: before (landed code) and after (this code), one after the other on this GPU
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py --model olmoe --bs 1 64 $B --json $R/new_olmoe.json > $R/new_olmoe.txt 2>&1
python3 -c "import json;c=json.load(open('$R/new_olmoe.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
(cd .baseline && timeout 90 python3 bench.py --model olmoe --bs 1 64 $B --ceilings $R/ceil.json --json $R/old_olmoe.json > $R/old_olmoe.txt 2>&1)
timeout 90 python3 bench.py --model mixtral --bs 1 $B --ceilings $R/ceil.json --json $R/new_mixtral.json > $R/new_mixtral.txt 2>&1
(cd .baseline && timeout 90 python3 bench.py --model mixtral --bs 1 $B --ceilings $R/ceil.json --json $R/old_mixtral.json > $R/old_mixtral.txt 2>&1)
timeout 60 python3 bench.py --model olmoe --bs 64 $B --ceilings $R/ceil.json --json $R/new_olmoe_again.json > $R/new_olmoe_again.txt 2>&1
tar czf $OUT/results.tgz -C $OUT r
tail -5 $R/train.log; tail -3 $R/gpu_tests.log; grep -h "minimoe bs" $R/*.txt
