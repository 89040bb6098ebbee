#!/usr/bin/env bash
# Session 30, call 1 on nvidia-h200 (~9 min): `--fold-router` (the o projection GEMV with the residual add, RMSNorm
# and router in its epilogue, kernels/o_route.py; one launch a MoE layer fewer at batch 1) on the GPU.
#  1. its tests (bf16, a CUDA graph with PDL: graphed == eager bits, scratch left zeroed);
#  2. in the graphed bs-1 step (`settings.fold_router`), OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite, Qwen1.5-MoE
#     (variants interleaved, medians of 3 rounds; "same NO" is possible: the logits skip h's bf16 rounding);
#  3. a PDL-off profile of OLMoE's bs-1 step with it on (the new kernel's own time beside the layer's).
# Usage (device tool, repo root): bash scripts/gpu/session30_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > $R/run_info.txt 2>&1; git log -1 --format=%H >> $R/run_info.txt 2>/dev/null
timeout 200 python3 -m pytest -q -p no:cacheprovider -rf tests/test_o_route.py > $R/pytest_o_route.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_o_route.txt; grep -E "^FAILED|Error" $R/pytest_o_route.txt | head
V=settings.fold_router
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe; do
  [ $SECONDS -lt 430 ] && { timeout $((520 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant fold:$V="'on'" \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -3; }
done
[ $SECONDS -lt 500 ] && { timeout 70 python3 scripts/profile_step.py --model olmoe --bs 1 --steps 5 --pdl off \
  --fold-router on --json $R/prof_olmoe_bs1_fold_nopdl.json > $R/prof_olmoe_bs1_fold_nopdl.txt 2>&1;
  echo "--- profile rc $?"; grep -A12 "one layer" $R/prof_olmoe_bs1_fold_nopdl.txt; }
tar czf $OUT/r.tgz -C $OUT r
