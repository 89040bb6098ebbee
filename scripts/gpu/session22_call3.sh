#!/usr/bin/env bash
# Twenty-second session, call 3 (~4 min): (a) the flaky bf16 fast-path test (call 2: fused/triton 3.8e-2 then 5e-3 on the
# same inputs in one process): fresh processes, the suspect first, PDL on / off, the allocator poisoned with NaN,
# loop experts with the Triton attention; (b) the o-projection tile [2, 1024] x 1 warp (Qwen3 (2048, 4096) -2.08%,
# OLMoE (2048, 2048) -0.95% in call 2) on the other models with a (2048, 2048) o: DeepSeek-V2-Lite, Qwen1.5-MoE.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
F=scripts/gpu/attn_flake.py
for c in deepseek-v3-tiny mixtral-tiny; do
  for i in 1 2; do timeout 40 python3 $F $c fused/triton,fused/sdpa,fused/triton; done
  timeout 40 python3 $F $c fused/triton,fused/triton --pdl off
  timeout 40 python3 $F $c fused/triton,fused/triton --pdl off
  timeout 40 python3 $F $c loop/triton,fused/sdpa,loop/triton
  timeout 40 python3 $F $c fused/triton,fused/sdpa --poison
  timeout 40 python3 $F $c loop/triton,fused/sdpa --poison
  timeout 40 python3 $F $c fused/sdpa,fused/triton --poison
done 2>&1 | grep -v Warning | tee $R/flake.txt
P=minimoe.kernels.dense_gemv.TILES
timeout 150 python3 scripts/step_probe.py --models deepseek-v2-lite qwen1.5-moe --batches 1 --variant base \
  "--variant=o2x1024w1:$P={(2048,2048):{'BLOCK_N':2,'BLOCK_K':1024,'num_warps':1}}" \
  "--variant=o4x512w1:$P={(2048,2048):{'BLOCK_N':4,'BLOCK_K':512,'num_warps':1}}" --rounds 3 --steps 40 \
  --json $R/step_o.json > $R/step_o.txt 2>&1
echo "--- probe o rc $?"; grep -v "^#" $R/step_o.txt | tail -7
tar czf $OUT/r.tgz -C $OUT r
