#!/usr/bin/env bash
# Forty-sixth session, call 3 (~6 min, one GPU): graphed == eager greedy tokens for every family with the combine's
# unroll on (tests/test_gpu.py), issue 16's last unseen cell (DeepSeek-V2, T=4096: 6 compile workers, an H100 holds
# fewer 7.6 GB copies of its layer than an H200), bench.py OLMoE bs 64.
# Usage (device tool, repo root): bash scripts/gpu/s46_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 170 python3 -m pytest -q -x tests/test_gpu.py > $R/test_gpu.txt 2>&1
echo "--- test_gpu rc $? t=$SECONDS"; tail -2 $R/test_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 240 python3 scripts/untuned_shapes.py --tma --workers 6 --shapes deepseek-v2 --buckets 4096 \
  --json $R/untuned_dsv2.json > $R/untuned_dsv2.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -3 $R/untuned_dsv2.txt | cut -c1-200
tar czf $OUT/r.tgz -C $OUT r
timeout 50 python3 bench.py --model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
  --json $R/bench_olmoe64.json > $R/bench_olmoe64.txt 2>&1
echo "--- bench rc $? t=$SECONDS"; grep -E "ceilings|minimoe bs" $R/bench_olmoe64.txt | tr -s ' '
tar czf $OUT/r.tgz -C $OUT r
