#!/usr/bin/env bash
# Session 14, call 1 on nvidia-h200 (~9 min):
#  0. GPU tests: the new fused q/k/v GEMV + rope + cache write (tests/test_qkv_gemv_rope.py), and what the thirteenth
#     session left unrun on a GPU (tests/test_skinny_gemm.py's review fixes, the int8 byte tiles' identity test);
#  1. --fuse-rope in the graphed step at bs 1 (scripts/step_probe.py, interleaved rounds): Mixtral (target <= 6.6 ms a
#     step, 6.674 before) with the fused kernel's and the o projection's tiles as variants; Qwen1.5-MoE (q/k/v bias);
#  2. fused_moe_quant.INT8_BYTE_TILES A/B: Mixtral int8 bs 16;
#  3. bench.py bs 1 rows, --fuse-rope on (default) and off in the same call: Mixtral, Qwen1.5-MoE.
# Usage (device tool, repo root): bash scripts/gpu/session14_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_qkv_gemv_rope.py tests/test_skinny_gemm.py \
  tests/test_quant_kernels.py -k "rope or fits or settings or skinny or byte or tuned" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
timeout 200 python3 scripts/step_probe.py --models mixtral --batches 1 --variant fused \
  --variant off:minimoe.rope_fusion.MAX_T=0 \
  --variant t16:"minimoe.rope_fusion.CONFIG={'BLOCK_N':16,'BLOCK_K':256}" \
  --variant o16:"minimoe.kernels.dense_gemv.TILES={(4096,4096):{'BLOCK_N':16,'BLOCK_K':256}}" \
  --variant o4:"minimoe.kernels.dense_gemv.TILES={(4096,4096):{'BLOCK_N':4,'BLOCK_K':1024}}" \
  --json $R/step_mixtral.json > $R/step_mixtral.txt 2>&1
echo "--- mixtral probe rc $?"; grep -v "^#" $R/step_mixtral.txt | tail -6
timeout 120 python3 scripts/step_probe.py --models qwen1.5-moe --batches 1 --variant fused \
  --variant off:minimoe.rope_fusion.MAX_T=0 --json $R/step_qwen15.json > $R/step_qwen15.txt 2>&1
echo "--- qwen1.5 probe rc $?"; grep -v "^#" $R/step_qwen15.txt | tail -3
timeout 150 python3 scripts/step_probe.py --quant int8 --models mixtral --batches 16 --variant words \
  --variant bytes:minimoe.kernels.fused_moe_quant.INT8_BYTE_TILES=True --json $R/step_int8_bytes.json \
  > $R/step_int8_bytes.txt 2>&1
echo "--- byte tiles rc $?"; grep -v "^#" $R/step_int8_bytes.txt | tail -3
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for m in mixtral qwen1.5-moe; do
  for f in on off; do
    [ $SECONDS -gt 520 ] && { echo "$m $f: skipped (time)"; continue; }
    timeout 80 python3 bench.py --model $m $W --fuse-rope $f --json $R/${m}_rope_$f.json > $R/${m}_rope_$f.txt 2>&1
    echo "${m} fuse-rope $f: $(grep -h 'minimoe bs' $R/${m}_rope_$f.txt)"
  done
done
tar czf $OUT/r.tgz -C $OUT r
