#!/usr/bin/env bash
# Session 15, call 2 on nvidia-h200 (~9.5 min):
#  0. GPU tests of the biased byte tiles (the failure call 1's timeout cut off first: --tb=short, -x);
#  1. Mixtral int4 tables re-tuned with the biased operands (BIASED_TILES int4 "asm", A's row sums now from a dot
#     with a flat tile in b's layout), written to $R/tune only;
#  2. step_probe Mixtral int4 bs 16 / 64: asm + new table, asm + old table, off + old table (call 1: asm 13.80 /
#     26.56 ms, off 17.08 / 21.27: A's row sums by tl.sum then);
#  3. step_probe Mixtral int8 bs 16 / 64: off (default) vs asm (call 1, tl.sum row sums: 23.16 / 62.86 vs 14.34 / 19.52).
# Usage (device tool, repo root): bash scripts/gpu/session15_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/test_quant_kernels.py -k "biased" \
  > $R/pytest_kernels.txt 2>&1
echo "--- pytest kernels rc $?"; tail -25 $R/pytest_kernels.txt | cut -c1-300
timeout 130 python3 scripts/tune_fused_moe_quant.py --formats int4 --presets mixtral --buckets 8 16 32 64 \
  --workers 12 --out $R/tune > $R/tune.txt 2>&1
echo "--- tune rc $?"; grep -E "^# (best|[0-9]+ rows)" $R/tune.txt | cut -c1-150; ls $R/tune
timeout 170 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 16 64 \
  --variant "asm_new:minimoe.kernels.fused_moe_quant.CONFIG_DIR='$R/tune'" --variant asm_old \
  --variant "off_old:minimoe.kernels.fused_moe_quant.BIASED_TILES='off'" --rounds 3 --steps 20 \
  --json $R/step_int4.json > $R/step_int4.txt 2>&1
echo "--- int4 probe rc $?"; grep -v "^#" $R/step_int4.txt | tail -7
timeout 120 python3 scripts/step_probe.py --quant int8 --models mixtral --batches 16 64 --variant off \
  --variant "asm:minimoe.kernels.fused_moe_quant.BIASED_TILES='asm'" --rounds 3 --steps 20 \
  --json $R/step_int8.json > $R/step_int8.txt 2>&1
echo "--- int8 probe rc $?"; grep -v "^#" $R/step_int8.txt | tail -5
timeout 60 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_quant_gpu.py -k "byte" \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -15 $R/pytest_gpu.txt | cut -c1-300
tar czf $OUT/r.tgz -C $OUT r
