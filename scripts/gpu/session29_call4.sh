#!/usr/bin/env bash
# Session 29, call 4 on nvidia-h200 (~7 min): every `-m gpu` test and the decode attention's test file on the final
# code (--attn-rope removed; the split merge kernel moved to kernels/decode_attention_merge.py, source unchanged).
# Usage (device tool, repo root): bash scripts/gpu/session29_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 330 python3 -m pytest -q -p no:cacheprovider -rf -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
[ $SECONDS -lt 360 ] && { timeout $((470 - SECONDS)) python3 -m pytest -q -p no:cacheprovider -rf \
  tests/test_decode_attention.py > $R/pytest_decode_attention.txt 2>&1; echo "--- pytest attention rc $?"; \
  tail -1 $R/pytest_decode_attention.txt; grep -E "^FAILED" $R/pytest_decode_attention.txt | head; }
tar czf $OUT/r.tgz -C $OUT r
