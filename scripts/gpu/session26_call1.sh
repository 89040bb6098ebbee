#!/usr/bin/env bash
# (Runs the code of commit a85e438: minimoe/l2_prefetch.py, kernels/l2_prefetch.py, scripts/l2_probe.py and
# tests/test_l2_prefetch.py were removed after this call; docs/results/2026-12-03-s26/README.md.)
# Session 26, call 1 on nvidia-h200 (~9 min): does a side-stream L2 prefetch of the attention weights help batch 1?
#  1. scripts/l2_probe.py: a synthetic graphed chain A1 (67 MB) -> A2 (33.5) -> B (25) -> C (8.4) of T = 1 GEMVs,
#     prefetches of B / C issued at A1 / A2 / B on a side stream, chunk sizes, evict_last; B and C L2-hot vs cold;
#  2. the graphed bs-1 decode step with minimoe.l2_prefetch installed: MODE off (base) / o / next / both / both
#     with EVICT_LAST, OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite (same tokens expected: a prefetch changes no value).
# Usage (device tool, repo root): bash scripts/gpu/session26_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_l2_prefetch.py > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
timeout 120 python3 scripts/l2_probe.py --json $R/l2_probe.json > $R/l2_probe.txt 2>&1
echo "--- l2_probe rc $?"; cat $R/l2_probe.txt | tail -16
P=minimoe.l2_prefetch
V="--variant base --variant o:$P.MODE='o' --variant next:$P.MODE='next' --variant both:$P.MODE='both'
   --variant both_last:$P.MODE='both',$P.EVICT_LAST=True --variant both_64k:$P.MODE='both',$P.CHUNK_BYTES=65536"
for m in olmoe qwen3 deepseek-v2-lite; do
  [ $SECONDS -lt 450 ] && { timeout 150 python3 scripts/step_probe.py --install $P:install --models $m --batches 1 $V \
    --rounds 3 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- probe $m rc $?"; \
    grep -v "^#" $R/step_$m.txt | tail -7; }
done
tar czf $OUT/r.tgz -C $OUT r
