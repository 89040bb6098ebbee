#!/usr/bin/env bash
# Session 28, call 1 on nvidia-h200 (~8 min; was pending_h200.sh, left by the twenty-seventh session):
#  1. every `-m gpu` test on the final code (minimoe/ as at 59b1d52: the twenty-sixth session ran only subsets of them);
#  2. a PDL-off profile of DeepSeek-V2-Lite's folded bs-1 step (docs/perf_notes.md, leads after the twenty-sixth
#     session) and bench.py bs 1 (499.1 and 493.7 out tok/s in the twenty-seventh session's calls 1-2; 500 asked).
# Usage (device tool, repo root): bash scripts/gpu/session28_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 330 python3 -m pytest -q -p no:cacheprovider -rf -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
[ $SECONDS -lt 470 ] && { timeout 60 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 1 --steps 5 --pdl off \
  --json $R/prof_dsv2_bs1_nopdl.json > $R/prof_dsv2_bs1_nopdl.txt 2>&1; echo "--- profile rc $?"; }
[ $SECONDS -lt 530 ] && { timeout 60 python3 bench.py --model deepseek-v2-lite --fused --warmup 1 --iters 3 --input-len 128 \
  --output-len 128 --bs 1 --json $R/bench_dsv2_1.json > $R/bench_dsv2_1.txt 2>&1; echo "--- bench rc $?"; \
  grep -A1 "config  TTFT" $R/bench_dsv2_1.txt | tail -1; }
tar czf $OUT/r.tgz -C $OUT r
