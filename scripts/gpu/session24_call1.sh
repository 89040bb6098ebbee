#!/usr/bin/env bash
# Session 24, call 1 on nvidia-h200 (~9 min): two probes of issue 16's bs-16/64 leads inside the graphed decode step.
#  1. the L2 warm-up of the MoE layer's first expert bytes after attention (expert_prefetch.PREFETCH_MB, off = base):
#     16 / 32 / 40 MB, OLMoE and DeepSeek-V2-Lite at bs 16 / 64; its GPU test (bit-equal logits);
#  2. DeepSeek-V2-Lite's MLA decode split plan (the twenty-third session's pending_h200.sh): SMALL_GRID_MIN_TILES
#     2 / 4 / 8 and PROGRAMS_PER_SM 1 at bs 64 / 16 / 1.
# Usage (device tool, repo root): bash scripts/gpu/session24_call1.sh  (at commit 5281294: the warm-up code was removed
# after this call measured it slower at every size, docs/results/2026-12-02-s24/README.md)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
P=minimoe.expert_prefetch.PREFETCH_MB
timeout 270 python3 scripts/step_probe.py --models olmoe deepseek-v2-lite --batches 64 16 --variant base \
  --variant pf16:$P=16 --variant pf32:$P=32 --variant pf40:$P=40 --rounds 3 --steps 30 \
  --json $R/step_prefetch.json > $R/step_prefetch.txt 2>&1
echo "--- prefetch probe rc $?"; grep -v "^#" $R/step_prefetch.txt | tail -12
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_l2_prefetch.py > $R/pytest_prefetch.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_prefetch.txt
A=minimoe.kernels.decode_attention
[ $SECONDS -lt 330 ] && { timeout $((560 - SECONDS)) python3 scripts/step_probe.py --models deepseek-v2-lite \
  --batches 64 16 1 --variant base --variant tiles2:$A.SMALL_GRID_MIN_TILES=2 --variant tiles4:$A.SMALL_GRID_MIN_TILES=4 \
  --variant tiles8:$A.SMALL_GRID_MIN_TILES=8 --variant pps1:$A.PROGRAMS_PER_SM=1 --rounds 3 --steps 30 \
  --json $R/step_mla_splits.json > $R/step_mla_splits.txt 2>&1; echo "--- mla probe rc $?"; grep -v "^#" $R/step_mla_splits.txt | tail -16; }
tar czf $OUT/r.tgz -C $OUT r
