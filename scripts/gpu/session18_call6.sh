#!/usr/bin/env bash
# Session 18, call 6 on nvidia-h200 (~1 min, the last device seconds): Mixtral-8x7B bs 16 int8, 128 / 128, with int8's
# prefill kept in-kernel below moe_dequant.DEQUANT_MIN_ROWS (call 4: TTFT 216-217 ms this session's code before,
# 199-201 the fifteenth session's).
# Usage (device tool, repo root): bash scripts/gpu/session18_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
timeout 70 python3 bench.py --model mixtral --fused --warmup 1 --iters 2 --input-len 128 --output-len 128 --bs 16 \
  --quant int8 2>&1 | grep -E "TTFT|minimoe bs"
