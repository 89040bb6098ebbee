#!/usr/bin/env bash
# Twenty-second session, call 4 (~5 min): the new defaults (dense_gemv.STEP_TILES: Qwen3-30B-A3B's o (2048, 4096) on
# [2, 1024] x 1 warp; gate_splitk.WIDE_GATE_E: the unfolded router on 16 x 256 tiles for 128-expert gates) against the
# old inside the step (Qwen3 bs 1 and 2), bench.py Qwen3 bs 1, every GPU test, OLMoE bs 16 / 64 with dense layers on the skinny GEMM, and the flaky fast-path test's sequence with PDL on and off.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model qwen3 $W --json $R/bench_qwen3.json > $R/bench_qwen3.txt 2>&1
echo "--- bench rc $?"; grep -h "minimoe bs\|floor" $R/bench_qwen3.txt | head -4
timeout 80 python3 scripts/step_probe.py --models qwen3 --batches 1 2 --variant base \
  "--variant=old:minimoe.kernels.dense_gemv.STEP_TILES={},minimoe.kernels.gate_splitk.WIDE_GATE_E=100000" \
  --rounds 2 --steps 40 --json $R/step_new_old.json > $R/step_new_old.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_new_old.txt | tail -4
timeout 200 python3 -m pytest -q -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
# bs 16 / 64: the dense layers on the split-K skinny GEMM instead of cuBLAS (thirteenth session: 0.7-0.9x cuBLAS at 64
# tokens, one kernel alone; never inside the step with PDL)
timeout 70 python3 scripts/step_probe.py --models olmoe --batches 16 64 --variant base \
  "--variant=skinny:minimoe.linear.SKINNY_AUTO=True" --rounds 2 --steps 20 \
  --json $R/step_skinny.json > $R/step_skinny.txt 2>&1
echo "--- probe skinny rc $?"; grep -v "^#" $R/step_skinny.txt | tail -4
# the flaky test's sequence (loop, grouped, then fused/triton; every tiny card in one process, as pytest runs them),
# PDL on and off, two processes each
C=olmoe-tiny,mixtral-tiny,qwen2-moe-tiny,qwen3-moe-tiny,deepseek-moe-tiny,deepseek-v2-lite-tiny,deepseek-v3-tiny
for p in on off on off; do
  [ $SECONDS -lt 320 ] && timeout 50 python3 scripts/gpu/attn_flake.py $C loop/sdpa,grouped/sdpa,fused/triton --pdl $p 2>&1 \
    | grep -v Warning | tee -a $R/flake.txt | grep -c FLAKE
done
tar czf $OUT/r.tgz -C $OUT r
