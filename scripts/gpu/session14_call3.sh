#!/usr/bin/env bash
# Session 14, call 3 on nvidia-h200 (~8 min, the session's last device minutes):
#  0. GPU tests of the int4 byte tiles with A's halves split in registers (fused_moe_quant.INT4_A_SPLIT);
#  1. step_probe Mixtral int4 bs 16 / 64: registers (default) vs strided (call 2: bs 64 50.5 ms, words 29.9) vs words;
#  2. int8 tables re-tuned with the byte tiles (scripts/tune_fused_moe_quant.py --write; the thirteenth session's were
#     tuned on the word path), then bench.py Mixtral int8 and int4 at bs 16 / 64 with them (call 2, old tables:
#     int8 13.976 / 20.039 ms, bf16 21.646 / 22.390).
# Usage (device tool, repo root): bash scripts/gpu/session14_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py tests/test_quant_kernels.py -k "byte" \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
timeout 150 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 16 64 --variant registers \
  --variant strided:"minimoe.kernels.fused_moe_quant.INT4_A_SPLIT='strided'" \
  --variant words:minimoe.kernels.fused_moe_quant.INT4_BYTE_TILES=False --rounds 3 --steps 20 \
  --json $R/step_int4.json > $R/step_int4.txt 2>&1
echo "--- int4 probe rc $?"; grep -v "^#" $R/step_int4.txt | tail -6
timeout 170 python3 scripts/tune_fused_moe_quant.py --formats int8 --presets mixtral --buckets 8 16 32 64 \
  --workers 12 --write --out $R/tune > $R/tune.txt 2>&1
echo "--- tune rc $?"; grep -E "^# (best|[0-9]+ rows)" $R/tune.txt | cut -c1-150
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 16 64; do
  for q in int8 int4; do
    [ $SECONDS -gt 450 ] && { echo "mixtral bs$bs $q: skipped (time)"; continue; }
    timeout 60 python3 bench.py --model mixtral $W --bs $bs --quant $q --json $R/mixtral${bs}_$q.json > $R/mixtral${bs}_$q.txt 2>&1
    echo "mixtral bs$bs $q: $(grep -h 'minimoe bs' $R/mixtral${bs}_$q.txt)"
  done
done
tar czf $OUT/r.tgz -C $OUT r
