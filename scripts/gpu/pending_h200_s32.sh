#!/usr/bin/env bash
# Pending for the next one-GPU call (~5 min, written in session 31 without device time left): two knobs that remove a
# launch a bs-1 step, both off: the greedy tail in one launch (kernels/greedy.py ONE_LAUNCH: pass 2 in pass 1's last
# program of each row) and the embedding's row gather inside the first layer's norm fold (norm_fusion.EMBED), in the
# graphed bs-1 step on OLMoE and Qwen3-30B-A3B, after their tests on the GPU (bf16, compiled). Whatever wins becomes
# the default; then bench OLMoE bs 1 (issue 16's 1,050: 1,048.1 / 1,048.0 in session 31, call 5).
# Usage (device tool, repo root): bash scripts/gpu/pending_h200_s32.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 150 python3 -m pytest -q tests/test_greedy.py tests/test_norm_gemv.py > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest.txt
G=minimoe.kernels.greedy; E=minimoe.norm_fusion
for m in olmoe qwen3; do
  timeout 200 python3 scripts/step_probe.py --models $m --batches 1 --input-len 128 --steps 60 --rounds 3 \
    --variant base --variant one:$G.ONE_LAUNCH=True --variant emb:$E.EMBED=True \
    --variant both:$G.ONE_LAUNCH=True,$E.EMBED=True --variant base2 \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -5
done
tar czf $OUT/r.tgz -C $OUT r
