#!/usr/bin/env bash
# Session 36, call 1 on nvidia-h200 (~4 min): what the decode loop costs between graphed steps (input copy, output
# clone, graph boundary): scripts/graph_boundary_probe.py on Qwen3-30B-A3B bs 1, OLMoE bs 1 / 64, DeepSeek-V2-Lite
# bs 64; then bench.py Qwen3-30B-A3B bs 1 (today's machine's reference).
# Usage (device tool, repo root): bash scripts/gpu/session36_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
timeout 150 python3 scripts/graph_boundary_probe.py --models qwen3 olmoe --batches 1 --rounds 3 \
  --json $R/boundary_bs1.json 2>&1 | tee $R/boundary_bs1.txt | grep -v Warn
timeout 150 python3 scripts/graph_boundary_probe.py --models olmoe deepseek-v2-lite --batches 64 --rounds 3 \
  --json $R/boundary_bs64.json 2>&1 | tee $R/boundary_bs64.txt | grep -v Warn
echo "--- t=$SECONDS"
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py --model qwen3 $C --bs 1 --json $R/bench_qwen3_bs1.json > $R/bench_qwen3_bs1.txt 2>&1
echo "--- bench rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_qwen3_bs1.txt | tr -s ' '
tar czf $OUT/r.tgz -C $OUT r
