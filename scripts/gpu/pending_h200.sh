#!/usr/bin/env bash
# For the next nvidia-h200 call (~5-7 min), left by the twenty-second session. First, settle on the GPU whether the bf16
# fast paths' intermittent test failure (tests/test_gpu.py::test_fast_paths_match_loop_bf16 failed for one card in two
# of the session's runs; call 5: 3 of 75 eager draws past 1e-2 with PDL on, 0 of 75 off, p ~ 0.12) was a race under
# PDL or a bf16 routing near-tie, as on the CPU (scripts/routing_ties.py): scripts/gpu/pdl_bisect.py compares the fast
# path's logits bit for bit with PDL on (twice) and off over 100 seeded draws, and notes each draw past the oracle's
# 1e-2 with its tokens routed apart; only if PDL changes bits does it bisect over the kernel modules (kernels/pdl.py
# TRIGGER_EARLY, OFF_IN). (scripts/pdl_order_check.py found no global access before the PDL wait in any of 56 kernel
# variants' SASS.) Then every GPU test, the tie-aware fast-path test among them (never run on a GPU yet).
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 scripts/gpu/pdl_bisect.py --draws 100 2>&1 | grep -v Warning | tee $R/pdl_bisect.txt
timeout 300 python3 -m pytest -q -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
