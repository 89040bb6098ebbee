#!/usr/bin/env bash
# For the next nvidia-h200 call (~6 min), left by the twenty-fourth session: DeepSeek-V2-Lite bs 64 is ~1.2% from issue
# 16's 6,800 out tok/s (6,717 with MLA's joined projections and the split3 router, s24 call 4). Profile its graphed step
# with PDL off (honest per-kernel times) at bs 64 and bs 1 with this code, to rank the next fusions (top-k into the
# alignment, the combine into the next RMSNorm: docs/perf_notes.md, leads after the twenty-fourth session); then every
# GPU test.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for bs in 64 1; do
  timeout 100 python3 scripts/profile_step.py --model deepseek-v2-lite --bs $bs --steps 10 --pdl off \
    --json $R/prof_dsv2_bs${bs}_nopdl.json > $R/prof_dsv2_bs${bs}_nopdl.txt 2>&1; echo "--- prof bs $bs rc $?"
done
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED" $R/pytest_gpu.txt | tail -5
tar czf $OUT/r.tgz -C $OUT r
