#!/usr/bin/env bash
# (Runs the code of commit 29fd559: RELEASE_AT_END_IN and its per-kernel calls were removed after this call; docs/results/2026-12-04-s34/README.md.)
# Session 34, call 7 on nvidia-h200 (~3 min): call 5's release at each program's end, tried on every other kernel module
# of the bs-1 chain (kernels/pdl.py RELEASE_AT_END_IN: PDL 3, each kernel calls release_at_end after its last store):
# graphed bs-1 step of Qwen3-30B-A3B and OLMoE, each variant interleaved with the defaults ("same" checks the tokens).
# Usage (device tool, repo root): bash scripts/gpu/session34_call7.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
P=minimoe.kernels.pdl
end() { echo "--variant end_$1:$P.RELEASE_AT_END_IN={'minimoe.kernels.$2'}"; }
probe() {  # tag model batches timeout variants...
  local tag=$1 m=$2 b=$3 t=$4; shift 4
  timeout $t python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 \
    --rounds 3 --variant base "$@" --variant base2 --json $R/step_$tag.json > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -9
}
probe qwen3 qwen3 1 150 $(end ng norm_gemv) $(end rope rope) $(end attn decode_attention) $(end dense dense_gemv) \
  $(end gate gate_splitk_fold) $(end moe fused_moe_small)
probe olmoe olmoe 1 110 $(end ng norm_gemv) $(end rope rope) $(end attn decode_attention) $(end oroute o_route) \
  $(end moe fused_moe_small)
tar czf $OUT/r.tgz -C $OUT r
