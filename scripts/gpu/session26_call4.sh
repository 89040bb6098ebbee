#!/usr/bin/env bash
# Session 26, call 4 on nvidia-h200 (~9 min): the final code of the session's DeepSeek changes.
#  1. GPU tests: skinny / tall GEMM (tall_gemm now splits K below 64 programs), the MLA folds, DeepSeek graphed == eager;
#  2. graphed prefill of DeepSeek-V2-Lite bs 1 / 16 (128 tokens each): tall_gemm split (base) / unsplit / F.linear
#     (call 3's profile: the unsplit router 42.7 µs a layer at 128 tokens, 2 programs);
#  3. graphed decode step bs 1 / 4: the new defaults (absorb in the prologue, W_uv in the merge: 8 columns, tile after
#     the wait) / the W_uv tile before the wait / both folds off (the previous code's path);
#  4. bench.py DeepSeek-V2-Lite bs 1 / 16 / 64.
# Usage (device tool, repo root): bash scripts/gpu/session26_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_mla_absorb.py tests/test_gpu.py \
  -k "tall or split3 or router or absorb or merge_uv or deepseek" > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
K=minimoe.kernels
timeout 110 python3 scripts/step_probe.py --prefill --models deepseek-v2-lite --batches 1 16 --variant base \
  --variant nosplit:$K.skinny_gemm.TALL_SPLIT_BELOW=0 --variant flinear:minimoe.linear.ROUTER_TALL_SPLIT3=False \
  --rounds 3 --steps 5 --json $R/prefill_router.json > $R/prefill_router.txt 2>&1
echo "--- prefill rc $?"; grep -v "^#" $R/prefill_router.txt | tail -7
timeout 120 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 1 4 --variant base \
  --variant w2:$K.mla_merge_uv.W_EARLY=2 --variant old:minimoe.mla.MERGE_UV_MAX_B=0,$K.mla_rope.ABSORB_MAX_T=0 \
  --rounds 3 --steps 30 --json $R/step_mla.json > $R/step_mla.txt 2>&1
echo "--- step rc $?"; grep -v "^#" $R/step_mla.txt | tail -7
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 1 16 64; do
  [ $SECONDS -lt 500 ] && { timeout 90 python3 bench.py --model deepseek-v2-lite $B --bs $bs \
    --json $R/bench_dsv2_$bs.json > $R/bench_dsv2_$bs.txt 2>&1; echo "--- bench bs $bs rc $?"; \
    grep -A1 "config  TTFT" $R/bench_dsv2_$bs.txt | tail -1; }
done
tar czf $OUT/r.tgz -C $OUT r
