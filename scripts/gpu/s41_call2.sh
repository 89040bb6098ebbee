#!/usr/bin/env bash
# Forty-first session, call 2: b_tma on the decode buckets in the graphed step (scripts/gpu/moe_tma_s41.py) for OLMoE
# (bs 16 / 64), Qwen3-30B-A3B (bs 64), Mixtral (bs 16 / 64); then bench.py OLMoE bs 64 with the tuned table as it
# is and with b_tma on its T = 64 bucket (both GEMMs), same call.
# Usage (device tool, repo root, nvidia-h200, ~8 min): bash scripts/gpu/s41_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for m in olmoe qwen3 mixtral; do
  BS=$([ $m = qwen3 ] && echo "64" || echo "64 16")
  timeout 150 python3 scripts/gpu/moe_tma_s41.py $m --batches $BS --steps 40 --rounds 3 --json $R/tma_$m.json \
    > $R/tma_$m.txt 2>&1
  echo "--- tma $m rc $? t=$SECONDS"; grep -v Warn $R/tma_$m.txt | grep -E "^(model|$m)"
  tar czf $OUT/r.tgz -C $OUT r
done
BA="--model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3"
T64="{'BLOCK_M': 16, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'num_warps': 8, 'num_stages': 3, 'b_tma': True}"
for v in base tma base2 tma2; do
  K=$([ ${v%2} = tma ] && echo "minimoe.kernels.moe_configs.BUCKET_OVERRIDES={64: $T64}" \
      || echo "minimoe.kernels.moe_configs.BUCKET_OVERRIDES={}")
  timeout 100 python3 scripts/bench_knob.py "$K" -- $BA --json $R/bench_olmoe64_$v.json > $R/bench_olmoe64_$v.txt 2>&1
  echo "--- bench $v rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_olmoe64_$v.txt
  tar czf $OUT/r.tgz -C $OUT r
done
