#!/usr/bin/env bash
# Session 25, call 4 on nvidia-h200 (~8 min): prefill's float32 router (DeepSeek) as split3 over row blocks
# (skinny_gemm.tall_gemm, linear.ROUTER_TALL_SPLIT3) instead of a cast kernel (~50 µs a layer at 8,192 tokens) and an
# SGEMM on the CUDA cores (~58 µs): call 3's `profile_step --aten`.
#  1. tests on the GPU: skinny GEMM (bf16), MLA, DeepSeek graphed == eager and quantized DeepSeek;
#  2. the graphed prefill of DeepSeek-V2-Lite bs 64, tall split3 (base) vs F.linear (rounding differs: "same NO");
#  3. the decode step with MLA's rope kernel at 1 / 2 warps a token (call 3's prefill pieces: 10.4 / 10.7 µs vs 13.5
#     at 4 warps), bs 64 and 1;
#  4. bench.py DeepSeek-V2-Lite bs 64 and bs 1 on the final code.
# Usage (device tool, repo root): bash scripts/gpu/session25_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_mla_rope.py tests/test_gpu.py \
  tests/test_quant_gpu.py -k "skinny or tall or split3 or router or deepseek or mla or split or absorbed" \
  > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^FAILED" $R/pytest.txt | head
timeout 120 python3 scripts/step_probe.py --prefill --models deepseek-v2-lite --batches 64 --variant base \
  --variant fp32_linear:minimoe.linear.ROUTER_TALL_SPLIT3=False --rounds 3 --steps 5 \
  --json $R/prefill_router.json > $R/prefill_router.txt 2>&1
echo "--- probe prefill rc $?"; grep -v "^#" $R/prefill_router.txt | tail -3
timeout 130 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 64 1 --variant base \
  --variant w1:minimoe.kernels.mla_rope.WARPS=1 --variant w2:minimoe.kernels.mla_rope.WARPS=2 --rounds 3 --steps 30 \
  --json $R/step_rope_warps.json > $R/step_rope_warps.txt 2>&1
echo "--- probe warps rc $?"; grep -v "^#" $R/step_rope_warps.txt | tail -7
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 64 1; do
  [ $SECONDS -lt 480 ] && { timeout 100 python3 bench.py --model deepseek-v2-lite $B --bs $bs \
    --json $R/bench_dsv2_$bs.json > $R/bench_dsv2_$bs.txt 2>&1; echo "--- bench bs $bs rc $?"; \
    grep -A1 "config  TTFT" $R/bench_dsv2_$bs.txt | tail -1; }
done
tar czf $OUT/r.tgz -C $OUT r
