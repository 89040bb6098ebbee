#!/usr/bin/env bash
# s21 call 6 (the budget's last minutes): the new combine tile (256 x 2 warps) against the old (1024 x 4) at bs 16,
# where the aligned path also runs, on OLMoE and Qwen3-30B-A3B: it must not slow a configuration.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
F=minimoe.kernels.fused_moe
for m in olmoe qwen3; do
  timeout 75 python3 scripts/step_probe.py --models $m --batches 16 --variant base \
    "--variant=old:$F.COMBINE_BLOCK_D=1024,$F.COMBINE_WARPS=4" --rounds 2 --steps 20 \
    --json $R/step_comb16_$m.json > $R/step_comb16_$m.txt 2>&1
  echo "--- probe bs 16 $m rc $?"; grep -v "^#" $R/step_comb16_$m.txt | tail -2
done
