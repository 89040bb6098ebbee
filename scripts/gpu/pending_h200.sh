#!/usr/bin/env bash
# For the next nvidia-h200 call (~4-7 min: up to 8 rounds of 150 draws at ~0.2 s a draw, call 5's rate), left by the
# twenty-second session: is the bf16 fast paths' occasional logits error (tests/test_gpu.py::
# test_fast_paths_match_loop_bf16 failed for one card in two of the session's runs; docs/results/2026-12-02-s22 call 5:
# 3 of 75 eager draws with PDL on, 0 of 75 off, a weak difference) a PDL race or a bf16 routing near-tie?
# scripts/gpu/pdl_bisect.py counts flaky draws with PDL on and off and how many draws changed a top-k choice; if PDL,
# it drops the early release (kernels/pdl.py TRIGGER_EARLY), then halves the set of modules launched without PDL (OFF_IN).
# (scripts/pdl_order_check.py already found no global access before the wait in any of 56 kernel variants' SASS.)
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 540 python3 scripts/gpu/pdl_bisect.py --draws 150 2>&1 | grep -v Warning | tee $R/pdl_bisect.txt
