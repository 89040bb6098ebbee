#!/usr/bin/env bash
# Session 14, call 2 on nvidia-h200 (~9.5 min): integer tensor-core tiles read as bytes, now on by default
# (fused_moe_quant.INT8_BYTE_TILES / INT4_BYTE_TILES; call 1: Mixtral int8 bs 16 30.9 -> 14.1 ms a graphed step).
#  0. GPU tests: bf16 byte tiles against the dequantized fp32 oracle and the word path at the engine's configs
#     (tests/test_quant_gpu.py), the fp32 identity tests (tests/test_quant_kernels.py), the two scripts' smoke tests;
#  1. step_probe: Mixtral int4 and int8 at bs 16 / 64, words (both switches off) vs bytes (the default);
#  2. bench.py Mixtral bs 16 and 64, bf16 / int8 / int4, 128 / 128 (bf16 in the same call);
#  3. (time left) Mixtral bs 1 bf16: the fused qkv tile [16, 256] and the o tile [4, 1024] together (call 1: -0.36% /
#     -0.18% alone).
# Usage (device tool, repo root): bash scripts/gpu/session14_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py tests/test_quant_kernels.py \
  tests/test_skinny_gemm.py -k "byte or smoke or graphed" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
OFF="words:minimoe.kernels.fused_moe_quant.INT8_BYTE_TILES=False,minimoe.kernels.fused_moe_quant.INT4_BYTE_TILES=False"
for q in int4 int8; do
  timeout 170 python3 scripts/step_probe.py --quant $q --models mixtral --batches 16 64 --variant bytes --variant "$OFF" \
    --rounds 3 --steps 20 --json $R/step_$q.json > $R/step_$q.txt 2>&1
  echo "--- $q probe rc $?"; grep -v "^#" $R/step_$q.txt | tail -4
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 16 64; do
  for q in none int8 int4; do
    [ $SECONDS -gt 480 ] && { echo "mixtral bs$bs $q: skipped (time)"; continue; }
    timeout 75 python3 bench.py --model mixtral $W --bs $bs --quant $q --json $R/mixtral${bs}_$q.json > $R/mixtral${bs}_$q.txt 2>&1
    echo "mixtral bs$bs $q: $(grep -h 'minimoe bs' $R/mixtral${bs}_$q.txt)"
  done
done
if [ $SECONDS -lt 470 ]; then
  timeout 110 python3 scripts/step_probe.py --models mixtral --batches 1 --variant base \
    --variant both:"minimoe.rope_fusion.CONFIG={'BLOCK_N':16,'BLOCK_K':256},minimoe.kernels.dense_gemv.TILES={(4096,4096):{'BLOCK_N':4,'BLOCK_K':1024}}" \
    --json $R/step_mixtral_tiles.json > $R/step_mixtral_tiles.txt 2>&1
  echo "--- tiles probe rc $?"; grep -v "^#" $R/step_mixtral_tiles.txt | tail -3
fi
tar czf $OUT/r.tgz -C $OUT r
