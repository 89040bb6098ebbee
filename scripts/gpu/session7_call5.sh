#!/usr/bin/env bash
# Session 7, call 5 on nvidia-h200 (~4 min): the decode-attention split kernel's tile swept (scripts/bench_attn_tiles.py:
# OLMoE / Qwen3-30B-A3B / Mixtral heads, B 16 and 64, contexts 192 and 1,024), today's launch beside each.
# Usage (device tool, repo root): bash scripts/gpu/session7_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 420 python3 scripts/bench_attn_tiles.py --json $R/attn_tiles.json > $R/attn_tiles.txt 2>&1
echo "rc $?"; grep -v "^  " $R/attn_tiles.txt; grep -c "WRONG" $R/attn_tiles.txt
