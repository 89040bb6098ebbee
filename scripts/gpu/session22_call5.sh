#!/usr/bin/env bash
# Twenty-second session, call 5 (~3 min, the last device minutes): the flaky fast-path error's rate with PDL on and off,
# one model a card and 25 input draws each (loop / SDPA oracle, then fused experts with the Triton attention).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for p in on off; do
  timeout 75 python3 scripts/gpu/attn_flake.py qwen3-moe-tiny,mixtral-tiny,deepseek-v3-tiny loop/sdpa,fused/triton \
    --pdl $p --reps 25 2>&1 | grep -v Warning > $R/flake_$p.txt
  echo "--- pdl $p: $(grep -c FLAKE $R/flake_$p.txt) flaky of $(grep -c "triton" $R/flake_$p.txt)"
  grep -A1 FLAKE $R/flake_$p.txt | head -8
done
