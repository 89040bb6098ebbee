#!/usr/bin/env bash
# Session 18, call 5 on nvidia-h200 (~3 min): where int8's prefill should take the dequantize-then-bf16 path on Mixtral
# (call 4: at bs 16 / 2,048 prompt tokens its TTFT was 8% above the fifteenth session's in-kernel path; at bs 64 /
# 8,192 the dequant path won 0.65 -> 0.51 s): one int8 layer, in-kernel byte tiles vs dequant, 512-8192 tokens.
# Usage (device tool, repo root): bash scripts/gpu/session18_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 150 python3 scripts/int4_paths.py --bits 8 --shape mixtral-8x7b --tokens 512 1024 2048 4096 8192 \
  --json $R/int8_paths.json > $R/int8_paths.txt 2>&1
echo "--- rc $?"; cat $R/int8_paths.txt
