#!/usr/bin/env bash
# s21 call 4: DeepSeek-V2-Lite's fp32 gate back on 8 x 128 tiles without the prefetch (gate_splitk._tiles), against
# the bf16 gates' 16 x 256 (variant fp32_16x256); with the new tiles, whether the split-K router now pays at bs 8
# (splitk8: ops.SPLITK_MAX_T 4 -> 8) and the norm fold at bs 4 (fold4: ops.FOLD_MAX_T 1 -> 4) on Qwen3 / OLMoE;
# Qwen3 bs 1 with 32-row tiles; bench.py DeepSeek-V2-Lite bs 1; the gate_splitk / norm_route GPU tests.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
G=minimoe.kernels.gate_splitk; O=minimoe.ops
timeout 80 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 1 8 --variant base \
  "--variant=fp32_16x256:$G.BLOCK_E_FP32=16,$G.BLOCK_D_FP32=256" --rounds 3 --steps 40 \
  --json $R/step_fp32.json > $R/step_fp32.txt 2>&1
echo "--- probe dsv2 rc $?"; grep -v "^#" $R/step_fp32.txt | tail -4
for m in qwen3 olmoe; do
  timeout 80 python3 scripts/step_probe.py --models $m --batches 4 8 --variant base "--variant=splitk8:$O.SPLITK_MAX_T=8" \
    "--variant=fold4:$O.FOLD_MAX_T=4" --rounds 2 --steps 40 --json $R/step_t_$m.json > $R/step_t_$m.txt 2>&1
  echo "--- probe bs 4 8 $m rc $?"; grep -v "^#" $R/step_t_$m.txt | tail -6
done
timeout 60 python3 scripts/step_probe.py --models qwen3 --batches 1 --variant base "--variant=be32:$G.BLOCK_E=32" \
  "--variant=be32bd128:$G.BLOCK_E=32,$G.BLOCK_D=128" --rounds 3 --steps 40 --json $R/step_q1.json > $R/step_q1.txt 2>&1
echo "--- probe qwen3 bs 1 rc $?"; grep -v "^#" $R/step_q1.txt | tail -3
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model deepseek-v2-lite $W --json $R/bench_dsv2.json > $R/bench_dsv2.txt 2>&1
echo "bench: $(grep -h 'minimoe bs' $R/bench_dsv2.txt)"
[ $SECONDS -lt 390 ] && timeout 150 python3 -m pytest -q tests/test_gate_splitk.py tests/test_norm_route.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
