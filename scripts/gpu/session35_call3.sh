#!/usr/bin/env bash
# Session 35, call 3 on nvidia-h200 (~9 min): the retuned prefill tables (calls 1-2: 1,024-16,384 tokens, b_tma
# candidates) against the tables as the session found them (docs/results/2026-12-04-s35/old_tables), whole models on
# one machine: bench.py bs 16 / 64 at 128 / 128 (prefill of 2,048 / 8,192 tokens) for the five models, old and new
# tables alternating per model (old, new); then the fused MoE and graph GPU tests with the new tables.
# Usage (device tool, repo root): bash scripts/gpu/session35_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R/new
CFG=minimoe/kernels/configs; OLD=docs/results/2026-12-04-s35/old_tables
cp $CFG/*bfloat16.json $R/new/
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for m in deepseek-v2-lite olmoe qwen3 qwen1.5-moe mixtral; do
  for t in old new; do
    [ $SECONDS -gt 430 ] && { echo "$m $t: skipped (time)"; continue; }
    if [ $t = old ]; then cp $OLD/*.json $CFG/; else cp $R/new/*.json $CFG/; fi
    timeout 90 python3 bench.py --model $m $C --bs 16 64 --json $R/bench_${m}_$t.json > $R/bench_${m}_$t.txt 2>&1
    echo "--- $m $t rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_$t.txt | tr -s ' '
  done
done
cp $R/new/*.json $CFG/
timeout $((580 - SECONDS)) python3 -m pytest -q tests/test_fused_moe.py tests/test_shared_fusion.py \
  tests/test_gpu.py -k "not slow" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest_gpu.txt
rm -rf $R/new
tar czf $OUT/r.tgz -C $OUT r
