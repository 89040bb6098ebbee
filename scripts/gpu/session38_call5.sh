#!/usr/bin/env bash
# Session 38, call 5 (and 6, with the gen-mark / gen-tcopy variants): generate()'s loop (device token buffer, stop check every 16 steps) against the old loop
# (decode(own=True), per-step stop check) and bench.py's loop (scripts/generate_loop_probe.py).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 300 python3 scripts/generate_loop_probe.py --models olmoe --batches 1 64 --rounds 3 --json $R/loop_olmoe.json \
  > $R/loop_olmoe.txt 2>&1
echo "--- olmoe rc $? t=$SECONDS"; grep -v Warn $R/loop_olmoe.txt | tail -16
timeout 200 python3 scripts/generate_loop_probe.py --models qwen3 --batches 1 --json $R/loop_qwen3.json \
  > $R/loop_qwen3.txt 2>&1
echo "--- qwen3 rc $? t=$SECONDS"; grep -v Warn $R/loop_qwen3.txt | tail -9
tar czf $OUT/r.tgz -C $OUT r
