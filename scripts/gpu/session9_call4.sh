#!/usr/bin/env bash
# Session 9, call 4 on nvidia-h200 (~2 min): scripts/pdl_prefetch_probe.py — [rms_norm -> dense GEMV] pairs in one
# CUDA graph with no PDL, PDL, and PDL + an L2 prefetch of each weight row's first bytes before gdc_wait.
# Usage (device tool, repo root): bash scripts/gpu/session9_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 scripts/pdl_prefetch_probe.py --json $R/probe.json 2>&1 | tee $R/probe.txt
tar czf $OUT/r.tgz -C $OUT r
