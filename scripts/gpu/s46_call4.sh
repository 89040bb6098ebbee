#!/usr/bin/env bash
# Forty-sixth session, call 4 (~6 min, one GPU): the combine's unroll (now on up to 64 tokens) against the runtime loop
# on the other models that fit one H100 in bf16 (Qwen3-30B-A3B, DeepSeek-V2-Lite, Qwen1.5-MoE) and on OLMoE's fp8
# experts (the quantized path shares the combine), graphed decode steps.
# Usage (device tool, repo root): bash scripts/gpu/s46_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
L=minimoe.kernels.fused_moe.COMBINE_UNROLL_MAX_T=0
timeout 300 python3 scripts/step_probe.py --models qwen3 deepseek-v2-lite qwen15-moe --batches 64 16 --input-len 128 \
  --steps 40 --rounds 3 --variant base --variant "loop:$L" --json $R/probe_bf16.json > $R/probe_bf16.txt 2>&1
echo "--- bf16 rc $? t=$SECONDS"; tail -7 $R/probe_bf16.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 120 python3 scripts/step_probe.py --models olmoe --quant fp8 --batches 64 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "loop:$L" --json $R/probe_fp8.json > $R/probe_fp8.txt 2>&1
echo "--- fp8 rc $? t=$SECONDS"; tail -3 $R/probe_fp8.txt
tar czf $OUT/r.tgz -C $OUT r
