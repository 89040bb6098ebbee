#!/usr/bin/env bash
# For an H100 call (kind nvidia-h100-x1), ~4 min: should another Hopper GPU without tables of its own read the H200's
# tuned fused-MoE tables (moe_configs.HOPPER_FALLBACK = "NVIDIA_H200") instead of the default rule? Graphed OLMoE
# decode steps (bs 64 / 16) and the bs-64 prefill with and without. Take the fallback as the default where it wins.
# Run in the forty-seventh session (docs/results/2026-12-05-s47/call2-3): mixed, so the fallback stays off.
# Usage (device tool, repo root, an H100): bash scripts/gpu/pending_h100_s46.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
F="h200tables:minimoe.kernels.moe_configs.HOPPER_FALLBACK='NVIDIA_H200'"
timeout 150 python3 scripts/step_probe.py --models olmoe qwen3 --batches 64 16 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "$F" --json $R/decode.json > $R/decode.txt 2>&1
echo "--- decode rc $? t=$SECONDS"; tail -9 $R/decode.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 90 python3 scripts/step_probe.py --prefill --models olmoe --batches 64 --input-len 128 --steps 3 --rounds 3 \
  --variant base --variant "$F" --json $R/prefill.json > $R/prefill.txt 2>&1
echo "--- prefill rc $? t=$SECONDS"; tail -3 $R/prefill.txt
tar czf $OUT/r.tgz -C $OUT r
