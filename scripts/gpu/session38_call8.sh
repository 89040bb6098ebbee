#!/usr/bin/env bash
# Session 38, call 8: the GPU tests of generate()'s new loop (DecodeGraph.record + the PDL mark, the stop check every
# STOP_CHECK_EVERY steps) and the loop probe again with the mark as generate()'s default.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  -k "pdl_mark or stop_ids or live_token or equals_eager_with_pdl" > $R/gpu_tests.txt 2>&1
echo "--- tests rc $? t=$SECONDS"; tail -3 $R/gpu_tests.txt
timeout 200 python3 scripts/generate_loop_probe.py --models olmoe --batches 1 64 --json $R/loop_olmoe.json \
  > $R/loop_olmoe.txt 2>&1
echo "--- olmoe rc $? t=$SECONDS"; grep -v Warn $R/loop_olmoe.txt | tail -18
timeout 150 python3 scripts/generate_loop_probe.py --models qwen3 --batches 1 --json $R/loop_qwen3.json \
  > $R/loop_qwen3.txt 2>&1
echo "--- qwen3 rc $? t=$SECONDS"; grep -v Warn $R/loop_qwen3.txt | tail -9
tar czf $OUT/r.tgz -C $OUT r
