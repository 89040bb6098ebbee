#!/usr/bin/env bash
# (Runs the code of commit 699da20: the three knobs were removed after this call; docs/results/2026-12-04-s34/README.md.)
# Session 34, call 1 on nvidia-h200 (~9 min): the decode MoE's GEMM1 -> GEMM2 boundary at batch 1
# (kernels/fused_moe_small.py): GEMM1 as one wave in a grid-stride loop (GEMM1_PROGRAMS_PER_SM), GEMM2 launched early
# with PDL beside it (GEMM2_EARLY), and its L2 prefetch of the first slots' rows before the wait (GEMM2_PREFETCH_SLOTS).
# Their GPU tests (same bits, eager and graphed), then the graphed bs-1 step of Qwen3-30B-A3B, OLMoE and
# DeepSeek-V2-Lite (shared experts in GEMM1) with each combination, interleaved with the defaults.
# Usage (device tool, repo root): bash scripts/gpu/session34_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 170 python3 -m pytest -q -m gpu tests/test_moe_boundary_gpu.py > $R/pytest_boundary.txt 2>&1
echo "--- pytest boundary rc $? t=$SECONDS"; tail -2 $R/pytest_boundary.txt
M=minimoe.kernels.fused_moe_small
V=(--variant "g1w4:$M.GEMM1_PROGRAMS_PER_SM=4" --variant "g1w3:$M.GEMM1_PROGRAMS_PER_SM=3"
   --variant "g1w3e:$M.GEMM1_PROGRAMS_PER_SM=3,$M.GEMM2_EARLY=True"
   --variant "g1w2e:$M.GEMM1_PROGRAMS_PER_SM=2,$M.GEMM2_EARLY=True"
   --variant "g1w3e2:$M.GEMM1_PROGRAMS_PER_SM=3,$M.GEMM2_EARLY=True,$M.GEMM2_PREFETCH_SLOTS=2"
   --variant "g1w2e8:$M.GEMM1_PROGRAMS_PER_SM=2,$M.GEMM2_EARLY=True,$M.GEMM2_PREFETCH_SLOTS=8"
   --variant "g1w4e:$M.GEMM1_PROGRAMS_PER_SM=4,$M.GEMM2_EARLY=True")
probe() {  # tag model batches timeout
  local tag=$1 m=$2 b=$3 t=$4
  [ $SECONDS -gt $((560 - t)) ] && { echo "--- $tag skipped (time) t=$SECONDS"; return; }
  timeout $t python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 \
    --rounds 3 --variant base "${V[@]}" --variant base2 --json $R/step_$tag.json > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -10
}
probe qwen3 qwen3 1 170
probe olmoe olmoe 1 120
probe dsv2 deepseek-v2-lite 1 110
tar czf $OUT/r.tgz -C $OUT r
