#!/usr/bin/env bash
# Session 26, call 5 on nvidia-h200 (~5 min): the review's fixes on the GPU (one dequantize of wkv_b a step, tall_split
# leaving no share empty, w_uv checks): the touched tests in bf16, bench.py DeepSeek-V2-Lite bs 1, and a PDL-off
# profile of the folded bs-1 step (the next session's starting point).
# Usage (device tool, repo root): bash scripts/gpu/session26_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_mla_absorb.py tests/test_gpu.py \
  -k "tall or split3 or router or absorb or merge_uv or deepseek" > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
[ $SECONDS -lt 200 ] && { timeout 80 python3 bench.py --model deepseek-v2-lite --fused --warmup 1 --iters 3 --input-len 128 \
  --output-len 128 --bs 1 --json $R/bench_dsv2_1.json > $R/bench_dsv2_1.txt 2>&1; echo "--- bench rc $?"; \
  grep -A1 "config  TTFT" $R/bench_dsv2_1.txt | tail -1; }
[ $SECONDS -lt 260 ] && { timeout 60 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 1 --steps 5 --pdl off \
  --json $R/prof_dsv2_bs1_nopdl.json > $R/prof_dsv2_bs1_nopdl.txt 2>&1; echo "--- profile rc $?"; }
tar czf $OUT/r.tgz -C $OUT r
