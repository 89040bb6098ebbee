#!/usr/bin/env bash
# Forty-fourth session, call 2 (~6 min): the README's five models x bs 1 / 16 / 64 (issue 16 item 4) with the code as
# landed (the o projection split over K on by default since the forty-second session). KNOB="mod.ATTR=V" runs every
# bench through scripts/bench_knob.py with that module knob set (e.g. a default that call 1 measured faster).
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s44_call2.sh   or   KNOB=... bash scripts/gpu/s44_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
if [ -n "${KNOB:-}" ]; then B="python3 scripts/bench_knob.py $KNOB --"; else B="python3 bench.py"; fi
echo "bench: $B"
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 16 64"
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 150 $B --model $m $C --json $R/bench_${m}.json > $R/bench_${m}.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}.txt | tr -s ' '
  tar czf $OUT/r.tgz -C $OUT r
done
# issue 13's bs-1 ratios with today's unpruned step (docs/pruning.md's last were measured on a slower unpruned step)
timeout 150 python3 scripts/bench_prune.py --out $R/prune --models olmoe --bs 1 --inter --intra 0.25 --skip 0.3333 \
  --iters 3 --budget-s 120 > $R/prune.txt 2>&1
echo "--- prune rc $? t=$SECONDS"; tail -12 $R/prune.txt
tar czf $OUT/r.tgz -C $OUT r
