#!/usr/bin/env bash
# Session 32, call 2 on nvidia-h200 (~8 min): the split rope kernel (kernels/rope.py Q_PROGRAMS: a token's q heads over
# that many programs plus one for k / v, every load before the first store) against the one-program kernel, in the
# graphed step of OLMoE and Qwen3-30B-A3B at bs 1 and 64 and Qwen1.5-MoE at bs 64 (where --fuse-rope does not own the
# rope), after its GPU tests (bf16, compiled) and the default-on embedding gather's; then PDL-off profiles of
# Qwen3-30B-A3B and OLMoE bs 1 with today's defaults.
# Usage (device tool, repo root): bash scripts/gpu/session32_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 200 python3 -m pytest -q tests/test_small_kernels.py tests/test_norm_gemv.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
P=minimoe.kernels.rope.Q_PROGRAMS
probe() {  # model batch
  timeout 200 python3 scripts/step_probe.py --models $1 --batches $2 --input-len 128 --steps 60 --rounds 3 \
    --variant base --variant q1:$P=1 --variant q4:$P=4 --variant q8:$P=8 --variant base2 \
    --json $R/step_$1_bs$2.json > $R/step_$1_bs$2.txt 2>&1; echo "--- $1 bs$2 rc $? t=$SECONDS"
  grep -v "^#" $R/step_$1_bs$2.txt | tail -5
}
probe qwen3 1
probe olmoe 1
probe qwen3 64
probe olmoe 64
probe qwen1.5-moe 64
for m in qwen3 olmoe; do
  timeout 100 python3 scripts/profile_step.py --model $m --bs 1 --steps 5 --pdl off --json $R/prof_${m}_bs1_nopdl.json \
    > $R/prof_${m}_bs1_nopdl.txt 2>&1; echo "--- prof $m rc $? t=$SECONDS"
  grep -A14 "one layer in launch order" $R/prof_${m}_bs1_nopdl.txt
done
tar czf $OUT/r.tgz -C $OUT r
