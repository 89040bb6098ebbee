#!/usr/bin/env bash
# Session 38, call 10: issue 13's bs-1 skipping with thresholds from greedy decode steps (bench_prune.py
# --skip-calibration decode, new) against the random-token windows (--skip-calibration random, as before); the
# "skipped" column now counts decode steps only. Call 11: CALIBS=timed (the timed run's own decode steps).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for c in ${CALIBS:-decode random}; do
  timeout 240 python3 scripts/bench_prune.py --models olmoe --bs 1 --intra 0.25 --skip 0.3333 0.5 --skip-calibration $c \
    --output-len 64 --budget-s 200 --out $R/prune_$c > $R/prune_$c.txt 2>&1
  echo "--- $c rc $? t=$SECONDS"; grep -E "skip|MET|MISSED" $R/prune_$c.txt | grep -v Warn | tail -10
done
tar czf $OUT/r.tgz -C $OUT r
