#!/usr/bin/env bash
# Forty-ninth session (~9 min on an H200): issue 13's whole speed table with today's code, in the issue's settings.
# Every pruning variant is first checked on the real shapes against the fp32 loop oracle (bench_prune.py), then
# timed: OLMoE-1B-7B and Qwen1.5-MoE-A2.7B shapes, random weights, bs 1 / 64 / 16 at 128 / 128 (--iters 3), then
# bs 16 at the seed's 2048 / 2048 (--iters 1; none, inter 50%, intra 25%, skip a third) for both models (bench_prune's
# --long also times those four at bs 16 128 / 128 first; their skip threshold comes from that bs-16 run).
# Variants: none | inter 12.5 / 25 / 50% | intra 12.5 / 25 / 50% | skip dropping 1/6 and 1/3 of the routed slots
# (in the first two steps the thresholds come from the timed bs-1 run's own decode steps). The last line per study judges the targets.
# Exits 3 at once on any GPU but an H200 (the targets are H200 figures). A step is not started when fewer seconds
# than its cap are left of the call's 590. Usage (device tool, repo root): bash scripts/gpu/pending_h200_s49.sh
set -u
. scripts/gpu/h200_only.sh
S="--ceilings $R/ceilings.json --inter 0.125 0.25 0.5 --intra 0.125 0.25 0.5 --output-len 128"
step() {  # step NAME CAP ARGS...
  local name=$1 cap=$2; shift 2
  if [ $((SECONDS + cap)) -gt 590 ]; then echo "=== $name: not started (t=$SECONDS, cap $cap)"; return; fi
  echo "=== $name (cap ${cap}s, t=$SECONDS)"
  timeout "$cap" python3 scripts/bench_prune.py --out $R/$name $S "$@" > $R/$name.log 2>&1
  echo "=== $name rc $? t=$SECONDS"
  sed -n '/^# all rows/,$p' $R/$name.log
  tar czf $OUT/r.tgz -C $OUT r
}
step olmoe 200 --models olmoe --bs 1 64 16 --iters 3 --budget-s 170
step qwen 130 --models qwen1.5-moe --bs 1 64 16 --iters 3 --budget-s 110
step olmoe_long 110 --models olmoe --bs 16 --long --inter 0.5 --intra 0.25 --skip 0.3333 --iters 1 --budget-s 95
step qwen_long 140 --models qwen1.5-moe --bs 16 --long --inter 0.5 --intra 0.25 --skip 0.3333 --iters 1 --budget-s 125
