#!/usr/bin/env bash
# Session 38, call 9: the whole GPU test file after generate()'s new loop (every graphed == eager test goes through it).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 560 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > $R/gpu_tests_all.txt 2>&1
echo "--- tests rc $? t=$SECONDS"; tail -5 $R/gpu_tests_all.txt
tar czf $OUT/r.tgz -C $OUT r
