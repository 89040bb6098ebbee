#!/usr/bin/env bash
# Session 15, call 1 on nvidia-h200 (~9 min):
#  0. GPU tests of the biased byte tiles (fused_moe_quant.BIASED_TILES "asm" / "ops" against the fp32 oracle and the
#     word path; the PTX's pairs must land where tl.dot expects them);
#  1. step_probe Mixtral int4 bs 16 / 64: asm (the new default) vs ops vs off (the fourteenth session's byte tiles:
#     bs 16 17.16 ms, bs 64 21.42 on its machine);
#  2. step_probe Mixtral int8 bs 16 / 64: asm vs off (13.77 / 19.91 ms, fourteenth session).
# Usage (device tool, repo root): bash scripts/gpu/session15_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py tests/test_quant_kernels.py \
  -k "byte or biased" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
timeout 200 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 16 64 --variant asm \
  --variant "ops:minimoe.kernels.fused_moe_quant.BIASED_TILES='ops'" \
  --variant "off:minimoe.kernels.fused_moe_quant.BIASED_TILES='off'" --rounds 3 --steps 20 \
  --json $R/step_int4.json > $R/step_int4.txt 2>&1
echo "--- int4 probe rc $?"; grep -v "^#" $R/step_int4.txt | tail -8
timeout 170 python3 scripts/step_probe.py --quant int8 --models mixtral --batches 16 64 --variant asm \
  --variant "off:minimoe.kernels.fused_moe_quant.BIASED_TILES='off'" --rounds 3 --steps 20 \
  --json $R/step_int8.json > $R/step_int8.txt 2>&1
echo "--- int8 probe rc $?"; grep -v "^#" $R/step_int8.txt | tail -6
tar czf $OUT/r.tgz -C $OUT r
