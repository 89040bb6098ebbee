#!/usr/bin/env bash
# Forty-fifth session, call 2 (~5 min): issue 16's last acceptance line with the code as it lands (graphed == eager
# greedy tokens on the GPU for every family: the whole of tests/test_gpu.py, norm_fusion.WITH_ROPE now on by default),
# then bench.py Mixtral bs 16 against the read probe with UNROLL tiles (it read 104% of the old probe's floor in the
# forty-fourth session). Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s45_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 -m pytest -q tests/test_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 75 python3 bench.py --model mixtral --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 16 \
  --json $R/bench_mixtral.json > $R/bench_mixtral.txt 2>&1
echo "--- mixtral rc $? t=$SECONDS"; grep -E "ceilings|WARNING|minimoe bs" $R/bench_mixtral.txt | tr -s ' '
tar czf $OUT/r.tgz -C $OUT r
