#!/usr/bin/env bash
# For the next one-GPU call (~7 min; the forty-third session had no device time): the forty-second session's call 5
# (scripts/gpu/s42_call5.sh: bench.py OLMoE bs 64 twice with o_splitk's default, the split's GPU tests, graphed ==
# eager), then the forty-third session's norm fold into --fuse-rope's q/k/v GEMV (`norm_fusion.WITH_ROPE`, off) in the
# graphed bs-1 step on the models where --fuse-rope takes the layer (Mixtral, Qwen1.5-MoE), against the default, 3
# rounds; its GPU tests (tests/test_norm_rope_fold.py). The fold changes h's rounding, so the probe's greedy check may
# say NO on random weights (the thirty-first session's norm fold did too): read the timing, and the tests for the bits.
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s43_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
bash scripts/gpu/s42_call5.sh
R=$OUT/r; mkdir -p $R
timeout 150 python3 -m pytest -q -x tests/test_norm_rope_fold.py tests/test_tp_fold.py tests/test_gpu.py \
  -k "not tp2 and (rope_norm or fold or fits or kernel or programs or hook)" > $R/pytest_s43.txt 2>&1
echo "--- pytest s43 rc $? t=$SECONDS"; tail -2 $R/pytest_s43.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 240 python3 scripts/step_probe.py --models mixtral qwen1.5-moe --batches 1 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "rope_norm:minimoe.norm_fusion.WITH_ROPE=True" --json $R/probe_rope_norm.json \
  > $R/probe_rope_norm.txt 2>&1
echo "--- probe rope_norm rc $? t=$SECONDS"; grep -E "^(mixtral|qwen)" $R/probe_rope_norm.txt
tar czf $OUT/r.tgz -C $OUT r
