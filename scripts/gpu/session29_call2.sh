#!/usr/bin/env bash
# Session 29, call 2 on nvidia-h200 (~9 min): `--attn-rope` (the q/k norm + rope + KV-cache write as the decode
# attention's prologue, kernels/attn_rope.py; one launch a layer fewer) on the GPU.
#  1. its tests and the decode attention's (bf16 and the compiled kernels; the barrier before the new row's read);
#  2. in the graphed step (`rope_attention.FORCE`), OLMoE and Qwen3-30B-A3B at bs 1 / 64, Qwen1.5-MoE at bs 1 / 64
#     (at bs 1 it runs --fuse-rope's GEMV epilogue today: also against that switched off, rope_fusion.MAX_T=0).
# Usage (device tool, repo root): bash scripts/gpu/session29_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 -m pytest -q -p no:cacheprovider -rf tests/test_attn_rope.py tests/test_decode_attention.py \
  > $R/pytest_attn_rope.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_attn_rope.txt; grep -E "^FAILED" $R/pytest_attn_rope.txt | head
F=minimoe.rope_attention.FORCE
for m in olmoe qwen3; do
  [ $SECONDS -lt 420 ] && { timeout $((540 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 64 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant rope:$F="'on'" \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -5; }
done
[ $SECONDS -lt 440 ] && { timeout $((560 - SECONDS)) python3 scripts/step_probe.py --models qwen1.5-moe --batches 1 64 \
  --input-len 128 --steps 60 --rounds 3 --variant base --variant rope:$F="'on'" \
  --variant nofuse:minimoe.rope_fusion.MAX_T=0 --variant rope_nofuse:$F="'on'",minimoe.rope_fusion.MAX_T=0 \
  --json $R/step_qwen15.json > $R/step_qwen15.txt 2>&1; echo "--- qwen1.5 rc $?"; grep -v "^#" $R/step_qwen15.txt | tail -9; }
tar czf $OUT/r.tgz -C $OUT r
