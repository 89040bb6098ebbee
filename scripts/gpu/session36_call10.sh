#!/usr/bin/env bash
# Session 36, call 10 on nvidia-h200 (~5 min): bench.py bs 1 on the five single-GPU presets with this session's timed
# loop (decode(own=False)), Qwen3-30B-A3B and OLMoE also with --eager-prefill (no prefill graph: the step's fast state
# of calls 3-9, at the cost of an eager TTFT); then the GPU graph tests.
# Usage (device tool, repo root): bash scripts/gpu/session36_call10.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for m in qwen3 olmoe deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 100 python3 bench.py --model $m $C --json $R/bench_${m}.json > $R/bench_${m}.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}.txt | tr -s ' '
done
for m in qwen3 olmoe; do
  timeout 100 python3 bench.py --model $m $C --eager-prefill --json $R/bench_${m}_eagerprefill.json \
    > $R/bench_${m}_eagerprefill.txt 2>&1
  echo "--- $m eager prefill rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_eagerprefill.txt | tr -s ' '
done
timeout $((560 - SECONDS)) python3 -m pytest -q tests/test_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
