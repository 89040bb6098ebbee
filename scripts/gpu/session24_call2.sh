#!/usr/bin/env bash
# Session 24, call 2 on nvidia-h200 (~6 min):
#  1. the joined MLA projections (linear.join_pair_: q and the latent in one buffer, one cuBLAS GEMM from
#     PAIR_JOIN_MIN_T = 3 tokens): their tests on the GPU, graphed == eager for the DeepSeek cards;
#  2. the graphed step joined (base) vs two GEMMs (apart: PAIR_JOIN_MIN_T = 1000000000), DeepSeek-V2-Lite bs 4 / 16 / 64;
#  3. kernel profiles with PDL off (honest per-kernel times: with PDL on a kernel's time includes its early launch's
#     wait), DeepSeek-V2-Lite and OLMoE at bs 64, to size the top-k + alignment and combine + RMSNorm fusions.
# Usage (device tool, repo root): bash scripts/gpu/session24_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gemv.py tests/test_gpu.py -k "pair or deepseek" \
  > $R/pytest_pair.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_pair.txt
timeout 200 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 64 16 4 --variant base \
  --variant apart:minimoe.linear.PAIR_JOIN_MIN_T=1000000000 --rounds 3 --steps 30 \
  --json $R/step_pair.json > $R/step_pair.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_pair.txt | tail -7
for m in deepseek-v2-lite olmoe; do
  [ $SECONDS -lt 480 ] && { timeout 100 python3 scripts/profile_step.py --model $m --bs 64 --steps 10 --pdl off \
    --json $R/prof_${m}_bs64_nopdl.json > $R/prof_${m}_bs64_nopdl.txt 2>&1; echo "--- prof $m rc $?"; }
done
tar czf $OUT/r.tgz -C $OUT r
