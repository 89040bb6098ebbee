#!/usr/bin/env bash
# Session 15, call 3 on nvidia-h200 (~9 min):
#  0. GPU tests of the biased int4 operands (call 2 found a None returned from a jit function, refused by Triton 3.6:
#     int8 is out of the biased path now) and of every byte-tile mode against the fp32 oracle;
#  1. bench.py Mixtral bs 16 / 64, bf16 / int8 / int4 in one call (ITL, out tok/s, memory): the int4 table re-tuned
#     in call 2 is committed;
#  2. step_probe OLMoE and Qwen3-30B-A3B int4 bs 16 / 64 (no int4 tables: the heuristic's tiles), asm vs off.
# Usage (device tool, repo root): bash scripts/gpu/session15_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 150 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_quant_kernels.py tests/test_quant_gpu.py \
  -k "biased or byte" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -4 $R/pytest_gpu.txt | cut -c1-300
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 16 64; do
  for q in none int8 int4; do
    [ $SECONDS -gt 470 ] && { echo "mixtral bs$bs $q: skipped (time)"; continue; }
    timeout 70 python3 bench.py --model mixtral $W --bs $bs --quant $q --json $R/mixtral${bs}_$q.json \
      > $R/mixtral${bs}_$q.txt 2>&1
    echo "mixtral bs$bs $q: $(grep -h 'minimoe bs' $R/mixtral${bs}_$q.txt)"
  done
done
if [ $SECONDS -lt 450 ]; then
  timeout $((570 - SECONDS)) python3 scripts/step_probe.py --quant int4 --models olmoe qwen3 --batches 16 64 \
    --variant asm --variant "off:minimoe.kernels.fused_moe_quant.BIASED_TILES='off'" --rounds 3 --steps 20 \
    --json $R/step_int4_small.json > $R/step_int4_small.txt 2>&1
  echo "--- probe rc $?"; grep -v "^#" $R/step_int4_small.txt | tail -9
fi
tar czf $OUT/r.tgz -C $OUT r
