#!/usr/bin/env bash
# Forty-sixth session, call 2 (~8 min, one GPU): the fused MoE tests on the GPU with the combine unroll and the rule's
# TMA prefill tiles; the rule's new prefill tiles against its old pointer tiles and the shipped tables
# (scripts/default_rule_ab.py); issue 16's last unseen cell (DeepSeek-V2, T=4096) against the tuner's full search.
# Usage (device tool, repo root): bash scripts/gpu/s46_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -x tests/test_moe_combine.py tests/test_fused_moe.py > $R/pytest_moe.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest_moe.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 240 python3 scripts/default_rule_ab.py --json $R/rule_ab.json > $R/rule_ab.txt 2>&1
echo "--- rule ab rc $? t=$SECONDS"; cat $R/rule_ab.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 170 python3 scripts/untuned_shapes.py --tma --shapes deepseek-v2 --buckets 4096 --json $R/untuned_dsv2.json \
  > $R/untuned_dsv2.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -3 $R/untuned_dsv2.txt
tar czf $OUT/r.tgz -C $OUT r
