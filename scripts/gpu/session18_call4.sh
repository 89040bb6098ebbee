#!/usr/bin/env bash
# Session 18, call 4 on nvidia-h200 (~9 min):
#  1. Mixtral-8x7B bs 16 int8, 128 / 128: the fifteenth session's code (4e698a9, 13.65 ms ITL on its machine; unpacked
#     by `git archive 4e698a9 minimoe bench.py models/Mixtral-8x7B-v0.1.json models/aliases.json` into old15/, not
#     committed) against this session's, alternated on one machine (call 2 measured 15.05 ms);
#  2. every GPU-marked test on this session's code (graphed == eager for every family, the kernels compiled against
#     their references), in order, cut by the time left.
# Usage (device tool, repo root, old15/ unpacked as above): bash scripts/gpu/session18_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
W="--model mixtral --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 16 --quant int8"
PYTHONPATH=$PWD timeout 90 python3 bench.py $W --json $R/new1.json > $R/new1.txt 2>&1
python3 -c "import json;c=json.load(open('$R/new1.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
(cd old15 && PYTHONPATH=$PWD timeout 90 python3 bench.py $W --ceilings $R/ceil.json --json $R/old1.json > $R/old1.txt 2>&1)
PYTHONPATH=$PWD timeout 90 python3 bench.py $W --ceilings $R/ceil.json --json $R/new2.json > $R/new2.txt 2>&1
(cd old15 && PYTHONPATH=$PWD timeout 90 python3 bench.py $W --ceilings $R/ceil.json --json $R/old2.json > $R/old2.txt 2>&1)
for f in new1 old1 new2 old2; do echo "$f: $(grep -h 'minimoe bs' $R/$f.txt)"; done
LEFT=$((540 - SECONDS))
echo "--- tests: ${LEFT} s"
PYTHONPATH=$PWD timeout $LEFT python3 -m pytest -m gpu -q --tb=short -p no:cacheprovider -rf tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED|error" $R/pytest_gpu.txt | tail -12 | cut -c1-300
tar czf $OUT/r.tgz -C $OUT r
