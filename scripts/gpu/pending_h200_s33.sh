#!/usr/bin/env bash
# Pending for the next one-GPU call (~5 min, written in session 32 after its device time was spent): two ways to take
# an L2 round trip off the bs-1 attention's critical path, both off, the same bits as today: the split kernel's q and
# K / V tile loaded before seq_len where every split is one tile (decode_attention.EARLY_TILE), and the merge kernel's
# tile loaded beside seq_len (decode_attention_merge.EARLY_LOADS). Their GPU tests (bf16, compiled), then the graphed
# bs-1 step of Qwen3-30B-A3B (issue 16's 400 tok/s: 389.6 in session 32), OLMoE and Qwen1.5-MoE, each knob and both.
# Whatever wins becomes the default; then bench Qwen3-30B-A3B bs 1 (128 / 128) against the code before.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200_s33.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 150 python3 -m pytest -q tests/test_decode_attention.py -k "early or tile_merge or gqa or graph" > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
T=minimoe.kernels.decode_attention.EARLY_TILE; L=minimoe.kernels.decode_attention_merge.EARLY_LOADS
for m in qwen3 olmoe qwen1.5-moe; do
  timeout 150 python3 scripts/step_probe.py --models $m --batches 1 --input-len 128 --steps 60 --rounds 3 \
    --variant base --variant tile:$T=True --variant loads:$L=True --variant both:$T=True,$L=True --variant base2 \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $? t=$SECONDS"; grep -v "^#" $R/step_$m.txt | tail -5
done
tar czf $OUT/r.tgz -C $OUT r
