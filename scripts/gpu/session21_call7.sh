#!/usr/bin/env bash
# s21 call 7 (the budget's last minutes): the quantized aligned path now takes the bf16 path's combine tile
# (256 x 2 warps) too: OLMoE fp8 at bs 64 against the old tile (1024 x 4).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
F=minimoe.kernels.fused_moe
timeout 80 python3 scripts/step_probe.py --models olmoe --quant fp8 --batches 64 --variant base \
  "--variant=old:$F.COMBINE_BLOCK_D=1024,$F.COMBINE_WARPS=4" --rounds 2 --steps 20 \
  --json $R/step_comb_fp8.json > $R/step_comb_fp8.txt 2>&1
echo "--- probe fp8 bs 64 rc $?"; grep -v "^#" $R/step_comb_fp8.txt | tail -2
