#!/usr/bin/env bash
# Session 18, call 4 on nvidia-h200 (~8 min): every GPU-marked test on the code as of this session (graphed == eager
# for every family, the kernels compiled against their references), in order, cut at 470 s.
# Usage (device tool, repo root): bash scripts/gpu/session18_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 470 python3 -m pytest -m gpu -q --tb=short -p no:cacheprovider -rf --durations=15 tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED|error" $R/pytest_gpu.txt | tail -12 | cut -c1-300
tar czf $OUT/r.tgz -C $OUT r
