#!/usr/bin/env bash
# Forty-fifth session, on an H100 when no H200 would start (~5 min): the device-relative checks of issue 16 — the fused
# MoE's default launch rule against the tuner's best on shapes no config lists (scripts/untuned_shapes.py --tma: a
# ratio on one card, so an H100's says how the rule generalises, though the issue asks for an H200's), and the whole
# of tests/test_gpu.py (graphed == eager greedy tokens for every family with the code as it lands).
# Usage (device tool, repo root, nvidia-h100-x1): bash scripts/gpu/s45_h100.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 scripts/untuned_shapes.py --tma --json $R/untuned.json > $R/untuned.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -4 $R/untuned.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 240 python3 -m pytest -q tests/test_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
