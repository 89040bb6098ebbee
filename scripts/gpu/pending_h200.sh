#!/usr/bin/env bash
# For the next nvidia-h200 call (~7-9 min), left by the twenty-second session: confirm on the GPU that the bf16 fast
# paths' intermittent test failure (tests/test_gpu.py::test_fast_paths_match_loop_bf16 failed for one card in two of
# the session's runs; call 5: 3 of 75 eager draws past 1e-2 with PDL on, 0 of 75 off) is a bf16 routing near-tie, as
# on the CPU (scripts/routing_ties.py: every draw past 1e-2 routed a token apart), and run the tie-aware test.
# scripts/gpu/pdl_bisect.py counts failing draws with PDL on and off (150 each, ~0.2 s a draw in call 5) and how many
# of them changed a top-k choice; only if failures come with PDL alone does it go on to bisect over the kernel modules
# (kernels/pdl.py TRIGGER_EARLY, OFF_IN). (scripts/pdl_order_check.py found no global access before the PDL wait in
# any of 56 kernel variants' SASS.) Then every GPU test.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 300 python3 scripts/gpu/pdl_bisect.py --draws 150 2>&1 | grep -v Warning | tee $R/pdl_bisect.txt
timeout 240 python3 -m pytest -q -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
