#!/usr/bin/env bash
# Session 18, call 1 on nvidia-h200 (~8 min): the attention-side RMSNorm folded into the q/k/v GEMV at batch 1
# (norm_fusion.py, kernels/norm_gemv.py; `--fold-norm`, on by default):
#  1. GPU tests: the kernels against the norm-then-GEMV pair and float64, every tiny family folded vs not, graphed ==
#     eager with PDL at batch 1;
#  2. graphed bs-1 step (scripts/step_probe.py), norm_fusion.ATTENTION off vs on, five models, interleaved rounds;
#  3. one Qwen3-30B-A3B layer in launch order with the fold (scripts/profile_step.py).
# Usage (device tool, repo root): bash scripts/gpu/session18_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_norm_fusion.py tests/test_qkv_gemv_rope.py \
  tests/test_gpu.py -k "norm or gemv_rope or with_pdl" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt | cut -c1-300
timeout 330 python3 scripts/step_probe.py --models olmoe qwen3 deepseek-v2-lite qwen1.5-moe mixtral --batches 1 \
  --variant "off:minimoe.norm_fusion.ATTENTION=False" --variant "fold:minimoe.norm_fusion.ATTENTION=True" \
  --rounds 3 --steps 40 --json $R/step_fold.json > $R/step_fold.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_fold.txt | tail -12
[ $SECONDS -lt 500 ] && timeout 60 python3 scripts/profile_step.py --model qwen3 --bs 1 > $R/prof_qwen3.txt 2>&1
tar czf $OUT/r.tgz -C $OUT r
