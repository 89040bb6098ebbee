#!/usr/bin/env bash
# Forty-sixth session, call 1 (~6 min, one H200): OLMoE bs 64's graphed prefill kernel by kernel (the TTFT is 34.7 of
# 547 ms end to end: issue 16's 15,000 is 0.01-0.15% away), the combine's slots unrolled at compile time
# (fused_moe.COMBINE_UNROLL, a bool then; now COMBINE_UNROLL_MAX_T) in the graphed prefill and decode steps, prefill-size combine / norm tiles, then bench.py
# OLMoE bs 64 with the unroll against without, alternating.
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s46_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 90 python3 scripts/profile_step.py --model olmoe --bs 64 --steps 10 --json $R/prof64.json > $R/prof64.txt 2>&1
echo "--- profile rc $? t=$SECONDS"; grep -A14 "prefill:" $R/prof64.txt | cut -c1-60,90-130
tar czf $OUT/r.tgz -C $OUT r
U=minimoe.kernels.fused_moe.COMBINE_UNROLL=True
timeout 120 python3 scripts/step_probe.py --prefill --models olmoe --batches 64 --input-len 128 --steps 5 --rounds 3 \
  --variant base --variant "unroll:$U" \
  --variant "unroll1024x4:$U,minimoe.kernels.fused_moe.COMBINE_BLOCK_D=1024,minimoe.kernels.fused_moe.COMBINE_WARPS=4" \
  --variant "rms4:minimoe.kernels.rmsnorm.ROW_WARPS=4" --variant "rms16:minimoe.kernels.rmsnorm.ROW_WARPS=16" \
  --json $R/prefill_probe.json > $R/prefill_probe.txt 2>&1
echo "--- prefill probe rc $? t=$SECONDS"; tail -8 $R/prefill_probe.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 150 python3 scripts/step_probe.py --models olmoe --batches 64 16 1 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "unroll:$U" --json $R/decode_probe.json > $R/decode_probe.txt 2>&1
echo "--- decode probe rc $? t=$SECONDS"; tail -8 $R/decode_probe.txt
tar czf $OUT/r.tgz -C $OUT r
for i in 1 2; do
  for v in base unroll; do
    k=$([ $v = unroll ] && echo "$U" || echo "minimoe.kernels.fused_moe.COMBINE_UNROLL=False")
    timeout 50 python3 scripts/bench_knob.py "$k" -- --model olmoe --fused --bs 64 --input-len 128 --output-len 128 \
      --warmup 1 --iters 3 --json $R/bench_${v}_$i.json > $R/bench_${v}_$i.txt 2>&1
    echo "--- bench $v $i rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_${v}_$i.txt | tr -s ' '
    tar czf $OUT/r.tgz -C $OUT r
  done
done
