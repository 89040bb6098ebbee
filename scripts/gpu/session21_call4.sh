#!/usr/bin/env bash
# s21 call 4: DeepSeek-V2-Lite's fp32 gate back on 8 x 128 tiles without the prefetch (gate_splitk._tiles), against
# the bf16 gates' 16 x 256 (variant fp32_16x256); the aligned path's combine tile at bs 64 (fused_moe.COMBINE_BLOCK_D
# / COMBINE_WARPS; 1024 x 4 warps today, 4.8 µs an OLMoE layer) on OLMoE and DeepSeek-V2-Lite; bench.py
# DeepSeek-V2-Lite bs 1; the gate_splitk / norm_route GPU tests.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
G=minimoe.kernels.gate_splitk; F=minimoe.kernels.fused_moe
timeout 80 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 1 8 --variant base \
  "--variant=fp32_16x256:$G.BLOCK_E_FP32=16,$G.BLOCK_D_FP32=256" --rounds 3 --steps 40 \
  --json $R/step_fp32.json > $R/step_fp32.txt 2>&1
echo "--- probe dsv2 rc $?"; grep -v "^#" $R/step_fp32.txt | tail -4
for m in olmoe deepseek-v2-lite; do
  timeout 100 python3 scripts/step_probe.py --models $m --batches 64 --variant base "--variant=c512:$F.COMBINE_BLOCK_D=512" \
    "--variant=c256:$F.COMBINE_BLOCK_D=256" "--variant=c256w2:$F.COMBINE_BLOCK_D=256,$F.COMBINE_WARPS=2" \
    "--variant=c128w1:$F.COMBINE_BLOCK_D=128,$F.COMBINE_WARPS=1" --rounds 2 --steps 20 \
    --json $R/step_comb_$m.json > $R/step_comb_$m.txt 2>&1
  echo "--- probe bs 64 $m rc $?"; grep -v "^#" $R/step_comb_$m.txt | tail -5
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model deepseek-v2-lite $W --json $R/bench_dsv2.json > $R/bench_dsv2.txt 2>&1
echo "bench: $(grep -h 'minimoe bs' $R/bench_dsv2.txt)"
[ $SECONDS -lt 400 ] && timeout 140 python3 -m pytest -q tests/test_gate_splitk.py tests/test_norm_route.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
