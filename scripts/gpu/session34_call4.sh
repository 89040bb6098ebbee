#!/usr/bin/env bash
# Session 34, call 4 on nvidia-h200 (~4 min): issue 13's bs-1 ratios with today's code (OLMoE: unpruned, 25% and 50%
# inter, 25% intra, a third of the routed slots skipped; each variant checked against the fp32 loop oracle first), the
# nineteenth session's command; then Qwen3-30B-A3B bs 1 and DeepSeek-V2-Lite bs 64 benched again (call 3's
# machine had been released: it ran on a fresh one)
# to show the run-to-run spread next to issue 16's 400 / 6,800.
# Usage (device tool, repo root): bash scripts/gpu/session34_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 scripts/bench_prune.py --out $R/prune --models olmoe --bs 1 --inter 0.25 0.5 --intra 0.25 \
  --skip 0.3333 --iters 3 --budget-s 170 > $R/prune.txt 2>&1
echo "--- prune rc $? t=$SECONDS"; grep -v Warn $R/prune.txt | tail -14
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for mb in "qwen3 1" "deepseek-v2-lite 64" "qwen3 1" "deepseek-v2-lite 64"; do
  set -- $mb
  [ $SECONDS -gt 480 ] && { echo "$1 bs$2: skipped (time)"; continue; }
  n=$(ls $R | grep -c "^bench_$1_bs$2") || true
  timeout 100 python3 bench.py --model $1 $C --bs $2 --json $R/bench_$1_bs$2_$n.json > $R/bench_$1_bs$2_$n.txt 2>&1
  echo "--- $1 bs$2 rc $? t=$SECONDS: $(grep -h 'minimoe bs' $R/bench_$1_bs$2_$n.txt | tr -s ' ')"
done
tar czf $OUT/r.tgz -C $OUT r
