#!/usr/bin/env bash
# Session 34, call 2 on nvidia-h200 (~10 min): which PDL early releases pay in the graphed decode step? Each variant
# drops gdc_launch_dependents from one kernel module's launches (kernels/pdl.py LATE_TRIGGER_IN: its successor then
# launches as its last program exits, and parks beside nothing), or from all (TRIGGER_EARLY=False): Qwen3-30B-A3B bs 1,
# OLMoE bs 1 and 64. Then the whole `-m gpu` suite on this tree's defaults.
# Usage (device tool, repo root): bash scripts/gpu/session34_call2.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
P=minimoe.kernels.pdl
late() { echo "--variant late_$1:$P.LATE_TRIGGER_IN={'minimoe.kernels.$2'}"; }
probe() {  # tag model batches timeout variants...
  local tag=$1 m=$2 b=$3 t=$4; shift 4
  timeout $t python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 \
    --rounds 3 --variant base "$@" --variant trig_off:$P.TRIGGER_EARLY=False --variant base2 \
    --json $R/step_$tag.json > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -11
}
probe qwen3 qwen3 1 150 $(late ng norm_gemv) $(late rope rope) $(late attn decode_attention) $(late dense dense_gemv) \
  $(late gate gate_splitk_fold) $(late moe fused_moe_small)
probe olmoe olmoe 1 110 $(late ng norm_gemv) $(late rope rope) $(late attn decode_attention) $(late oroute o_route) \
  $(late moe fused_moe_small)
probe olmoe64 olmoe 64 120 $(late rope rope) $(late attn decode_attention) $(late route route) \
  $(late align moe_align) $(late moe fused_moe) $(late norm rmsnorm)
timeout $((590 - SECONDS)) python3 -m pytest -q -m gpu tests > $R/pytest_gpu.txt 2>&1
echo "--- pytest -m gpu rc $? t=$SECONDS"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
