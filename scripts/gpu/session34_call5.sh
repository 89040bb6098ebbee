#!/usr/bin/env bash
# Session 34, call 5 on nvidia-h200 (~4 min): the decode MoE's GEMM2 launched with PDL, released by each GEMM1 program
# at its end (fused_moe_small.GEMM2_AFTER_GEMM1_END; kernels/pdl.py release_at_end): its GPU test (same bits, eager and
# graphed), then the graphed bs-1 step of Qwen3-30B-A3B, OLMoE and DeepSeek-V2-Lite with it, interleaved with the default.
# Usage (device tool, repo root): bash scripts/gpu/session34_call5.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 120 python3 -m pytest -q -m gpu tests/test_moe_boundary_gpu.py > $R/pytest_boundary.txt 2>&1
echo "--- pytest boundary rc $? t=$SECONDS"; tail -2 $R/pytest_boundary.txt
K=minimoe.kernels.fused_moe_small.GEMM2_AFTER_GEMM1_END
probe() {  # tag model batches timeout
  local tag=$1 m=$2 b=$3 t=$4
  [ $SECONDS -gt $((540 - t)) ] && { echo "--- $tag skipped (time) t=$SECONDS"; return; }
  timeout $t python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 --rounds 3 \
    --variant base --variant end:$K=True --variant base2 --variant end2:$K=True --json $R/step_$tag.json \
    > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -5
}
probe qwen3 qwen3 1 100
probe olmoe olmoe 1 80
probe dsv2 deepseek-v2-lite 1 80
probe qwen15 qwen1.5-moe 1 80
tar czf $OUT/r.tgz -C $OUT r
