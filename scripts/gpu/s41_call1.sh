#!/usr/bin/env bash
# Forty-first session, call 1: (1) the GPU tests with the bf16 greedy logits on by default (the thirty-ninth session's
# lost call 4: graphed == eager on every family, the greedy tail, the persistent attention); (2) OLMoE's bs-64 decode
# MoE tiles in the graphed step (scripts/gpu/moe64_sweep_s41.py: 11 candidates for the T = 64 bucket, TMA weight tiles
# and GEMM2 overrides among them); (3) the persistent attention in Qwen3-30B-A3B's graphed bs-128 step (lead 4).
# Usage (device tool, repo root, nvidia-h200, ~7 min): bash scripts/gpu/s41_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 -m pytest -q tests/test_gpu.py tests/test_greedy.py tests/test_generate.py \
  tests/test_decode_attention_persistent.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
timeout 280 python3 scripts/gpu/moe64_sweep_s41.py --steps 40 --rounds 3 --json $R/sweep64.json > $R/sweep64.txt 2>&1
echo "--- sweep rc $? t=$SECONDS"; grep -v Warn $R/sweep64.txt | tail -14
tar czf $OUT/r.tgz -C $OUT r
timeout 100 python3 scripts/step_probe.py --models qwen3 --batches 128 --input-len 128 --steps 30 --rounds 3 \
  --variant base --variant persist:minimoe.kernels.decode_attention.PERSISTENT=True --json $R/probe_qwen3_128.json \
  > $R/probe_qwen3_128.txt 2>&1
echo "--- probe qwen3 128 rc $? t=$SECONDS"; grep -v Warn $R/probe_qwen3_128.txt | tail -3
tar czf $OUT/r.tgz -C $OUT r
