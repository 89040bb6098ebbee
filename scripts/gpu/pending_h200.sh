#!/usr/bin/env bash
# For the next nvidia-h200 call (~6 min), left by the twenty-third session: DeepSeek-V2-Lite bs 64 is 3.4% from issue
# 16's 6,800 out tok/s (6,576.6 with the shared expert fused, s23 call 2). Its MLA decode attention at bs 64 runs 64
# programs (one a sequence: 16 heads in one tile), fewer than the SMs, so the split plan takes the small-grid floor of
# one K tile a split: 5 splits + a merge (s23 call 1's profile: split 9.5 + merge 9.9 µs a layer, with the merge's
# early-launch wait, for ~14 MB of latent cache). Probe the split plan inside the graphed step: more K tiles a split
# (SMALL_GRID_MIN_TILES 2 / 4; 8 leaves one split: no merge at all) and one program a SM (PROGRAMS_PER_SM 1); the same at
# bs 16 and bs 1 (the bs-1 plan must not move: SMALL_GRID_MIN_TILES 1 was measured best there, fourth session). Then
# every GPU test.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
A=minimoe.kernels.decode_attention
timeout 300 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 64 16 1 --variant base \
  --variant tiles2:$A.SMALL_GRID_MIN_TILES=2 --variant tiles4:$A.SMALL_GRID_MIN_TILES=4 \
  --variant tiles8:$A.SMALL_GRID_MIN_TILES=8 --variant pps1:$A.PROGRAMS_PER_SM=1 --rounds 3 --steps 30 \
  --json $R/step_mla_splits.json > $R/step_mla_splits.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_mla_splits.txt | tail -16
timeout 260 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED" $R/pytest_gpu.txt | tail -5
tar czf $OUT/r.tgz -C $OUT r
