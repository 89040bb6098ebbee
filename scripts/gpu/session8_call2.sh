#!/usr/bin/env bash
# Session 8, call 2 on nvidia-h200 (~7 min): split-K for the decode MoE's GEMM2 (kernels/fused_moe_small.py, SPLIT
# programs per column block, the last to arrive adds the partials in order). GPU tests of the fused MoE (graph replay
# == eager bits) and of graphed == eager decode for every family; scripts/bench_moe_small.py with the split tiles in
# its sweep (every config checked against the fp32 loop oracle first); then the batch-1 kernel tables of OLMoE,
# Qwen3-30B-A3B and DeepSeek-V2-Lite with the new default (one layer in launch order: compare with call 1).
# Usage (device tool, repo root): bash scripts/gpu/session8_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
timeout 200 python3 -m pytest -q -x tests/test_fused_moe.py tests/test_gpu.py > $R/pytest_gpu.txt 2>&1; echo "--- pytest rc $?"; tail -4 $R/pytest_gpu.txt
timeout 240 python3 scripts/bench_moe_small.py --presets olmoe qwen3 dsv2lite qwen15 mixtral --json $R/small.json > $R/small.txt 2>&1
echo "--- sweep rc $?"; grep -E "^[a-z0-9]+ E=|default|dn .*/[0-9]+/[0-9]+/[0-9]+/[0-9]+/|best|^preset|^[a-z0-9]+ +[12] " $R/small.txt
for m in olmoe qwen3 deepseek-v2-lite; do
  timeout 120 python3 scripts/profile_step.py --model $m --bs 1 --steps 10 --json $R/prof_${m}_bs1.json > $R/prof_${m}_bs1.txt 2>&1
  echo "--- $m bs 1 rc $?"; grep "decode:" $R/prof_${m}_bs1.txt; sed -n '/one layer in launch order/,$p' $R/prof_${m}_bs1.txt
done
cd $OUT && tar czf r.tgz r && rm -rf r
