#!/usr/bin/env bash
# Session 27 call 1: the pending script left by the twenty-sixth session (GPU tests, folded DSV2 bs-1 profile, bench bs 1).
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_mla_absorb.py \
  -k "tall or absorb or merge_uv" > $R/pytest_fixes.txt 2>&1
echo "--- pytest fixes rc $?"; tail -1 $R/pytest_fixes.txt; grep -E "^(FAILED|E )" $R/pytest_fixes.txt | head
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
[ $SECONDS -lt 480 ] && { timeout 60 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 1 --steps 5 --pdl off \
  --json $R/prof_dsv2_bs1_nopdl.json > $R/prof_dsv2_bs1_nopdl.txt 2>&1; echo "--- profile rc $?"; }
[ $SECONDS -lt 530 ] && { timeout 60 python3 bench.py --model deepseek-v2-lite --fused --warmup 1 --iters 3 --input-len 128 \
  --output-len 128 --bs 1 --json $R/bench_dsv2_1.json > $R/bench_dsv2_1.txt 2>&1; echo "--- bench rc $?"; \
  grep -A1 "config  TTFT" $R/bench_dsv2_1.txt | tail -1; }
tar czf $OUT/r.tgz -C $OUT r
