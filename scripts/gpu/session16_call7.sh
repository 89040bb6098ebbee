#!/usr/bin/env bash
# Session 16, call 7 on nvidia-h200 (~4 min, the session's last device minutes): GEMM1's chained pairs split from a
# broadcast (no conversion of the words' quads) and, with fused_moe_quant_pair.X_TILE, loaded as a [ROWS, V] tile
# (the wide tile's loop: 18 -> 10 -> 2 barriers in the sm90 compile); GPU tests of the PTX, then the graphed
# Mixtral int4 bs-1 step, X_TILE on vs off.
# Usage (device tool, repo root): bash scripts/gpu/session16_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 70 python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/test_quant_gpu.py -k "pair_ptx and (int4 or int8)" \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt | cut -c1-300
timeout 130 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 1 \
  --variant tile --variant "bcast:minimoe.kernels.fused_moe_quant_pair.X_TILE=False" --rounds 3 --steps 20 \
  --json $R/step_int4.json > $R/step_int4.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_int4.txt | tail -3
tar czf $OUT/r.tgz -C $OUT r
