#!/usr/bin/env bash
# For the next call that lands on an H200, ~70 s: bench.py OLMoE bs 64 three times with today's code (issue 16's
# 15,000 out tok/s on an H200; the forty-sixth session's combine unroll added +0.2% on an H100 and is unmeasured on an
# H200). Exits 3 at once on any other GPU, so a call the tool serves with an H100 costs only its start.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200_s47.sh
set -u
. scripts/gpu/h200_only.sh
for i in 1 2 3; do
  timeout 50 python3 bench.py --model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
    --json $R/bench_olmoe64_$i.json > $R/bench_olmoe64_$i.txt 2>&1
  echo "--- bench olmoe64 $i rc $? t=$SECONDS"; grep -E "ceilings|minimoe bs" $R/bench_olmoe64_$i.txt | tr -s ' '
  tar czf $OUT/r.tgz -C $OUT r
done
