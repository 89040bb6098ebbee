#!/usr/bin/env bash
# Session 35, call 5 on nvidia-h200 (~4 min): call 4's retuned 128-token bucket in the models call 4 did not bench:
# bench.py bs 1 (a 128-token prefill) for DeepSeek-V2-Lite, Qwen1.5-MoE and Mixtral with the tables before
# (docs/results/2026-12-04-s35/call4/tables_before) and after call 4's tuning, alternating.
# Usage (device tool, repo root): bash scripts/gpu/session35_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R/after
CFG=minimoe/kernels/configs; BEFORE=docs/results/2026-12-04-s35/call4/tables_before
cp $CFG/*bfloat16.json $R/after/
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for m in deepseek-v2-lite qwen1.5-moe mixtral; do
  for t in before after; do
    [ $SECONDS -gt 300 ] && { echo "$m $t: skipped (time)"; continue; }
    if [ $t = before ]; then cp $BEFORE/*.json $CFG/; else cp $R/after/*.json $CFG/; fi
    timeout 70 python3 bench.py --model $m $C --bs 1 --json $R/bench_${m}_$t.json > $R/bench_${m}_$t.txt 2>&1
    echo "--- $m $t rc $? t=$SECONDS: $(grep -h 'minimoe bs' $R/bench_${m}_$t.txt | tr -s ' ')"
  done
done
rm -rf $R/after
tar czf $OUT/r.tgz -C $OUT r
