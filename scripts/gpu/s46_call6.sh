#!/usr/bin/env bash
# Forty-sixth session, call 6 (~5 min, one GPU): the rule's TMA prefill tiles against its pointer tiles again, now with
# 3 rounds in alternating order (call 2 timed each once, in one order): Qwen2-57B-A14B and Qwen3-235B-A22B at 4,096 /
# 8,192 tokens.
# Usage (device tool, repo root): bash scripts/gpu/s46_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 330 python3 scripts/default_rule_ab.py --shapes qwen2-57b qwen3-235b --buckets 4096 8192 --rounds 3 \
  --json $R/rule_ab.json > $R/rule_ab.txt 2>&1
echo "--- rule ab rc $? t=$SECONDS"; cat $R/rule_ab.txt
tar czf $OUT/r.tgz -C $OUT r
