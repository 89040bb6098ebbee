#!/usr/bin/env bash
# Session 29, call 3 on nvidia-h200 (~7 min): `--attn-rope` again, its first K / V tile's loads now issued before the
# prologue and the new row used from registers (no barrier): call 2's prologue in front of the loads measured
# +1.2-2.3% a step (bs 1, OLMoE bs 64), -0.54% (Qwen3-30B-A3B bs 64).
#  1. its tests and the decode attention's main ones (the plain path now sits in the kernel's constexpr else);
#  2. in the graphed step: OLMoE and Qwen3-30B-A3B at bs 1 / 64; Qwen1.5-MoE bs 1 / 64 (against --fuse-rope too).
# Usage (device tool, repo root): bash scripts/gpu/session29_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 170 python3 -m pytest -q -p no:cacheprovider -rf tests/test_attn_rope.py tests/test_decode_attention.py \
  -k "not mla and not merge_in_split" > $R/pytest_attn_rope.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_attn_rope.txt; grep -E "^FAILED" $R/pytest_attn_rope.txt | head
F=minimoe.rope_attention.FORCE
for m in olmoe qwen3; do
  [ $SECONDS -lt 400 ] && { timeout $((520 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 64 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant rope:$F="'on'" \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -5; }
done
[ $SECONDS -lt 430 ] && { timeout $((550 - SECONDS)) python3 scripts/step_probe.py --models qwen1.5-moe --batches 1 64 \
  --input-len 128 --steps 60 --rounds 3 --variant base --variant rope:$F="'on'" \
  --variant rope_nofuse:$F="'on'",minimoe.rope_fusion.MAX_T=0 \
  --json $R/step_qwen15.json > $R/step_qwen15.txt 2>&1; echo "--- qwen1.5 rc $?"; grep -v "^#" $R/step_qwen15.txt | tail -7; }
tar czf $OUT/r.tgz -C $OUT r
