#!/usr/bin/env bash
# Session 32, call 7 on nvidia-h200 (~3 min, the session's last device seconds): OLMoE's full q norm over 8 q programs
# (rope.FULL_SPLIT: each sums Σ q² over the whole q row itself) against one q program, in the graphed step of OLMoE at
# bs 1 and 64, then its GPU tests (bf16, compiled).
# Usage (device tool, repo root): bash scripts/gpu/session32_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
F=minimoe.kernels.rope.FULL_SPLIT
for bs in 1 64; do
  timeout 80 python3 scripts/step_probe.py --models olmoe --batches $bs --input-len 128 --steps 60 --rounds 3 \
    --variant base --variant full:$F=True --variant base2 --variant full2:$F=True \
    --json $R/step_olmoe_bs$bs.json > $R/step_olmoe_bs$bs.txt 2>&1; echo "--- olmoe bs$bs rc $? t=$SECONDS"
  grep -v "^#" $R/step_olmoe_bs$bs.txt | tail -4
done
timeout 60 python3 -m pytest -q tests/test_small_kernels.py -k split > $R/pytest.txt 2>&1; echo "--- pytest rc $?"
tail -2 $R/pytest.txt
tar czf $OUT/r.tgz -C $OUT r
