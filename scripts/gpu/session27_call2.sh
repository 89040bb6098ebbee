#!/usr/bin/env bash
# Session 27, call 2 on nvidia-h200 (~9 min): the next-norm fold at bs 16 / 64 and on Mixtral, then bench rows.
#  1. graphed decode step, fold on (base) / the aligned variant off: DeepSeek-V2-Lite and OLMoE at bs 64 and 16;
#     Mixtral-8x7B bs 1, fold on / the decode variant off;
#  2. bench.py (128 / 128): OLMoE bs 1 and 64, Qwen3-30B-A3B bs 1, DeepSeek-V2-Lite bs 64, Mixtral bs 1.
# Usage (device tool, repo root): bash scripts/gpu/session27_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 170 python3 scripts/step_probe.py --models deepseek-v2-lite olmoe --batches 64 16 --variant base \
  --variant off:minimoe.next_norm.ALIGNED=False --rounds 3 --steps 20 --json $R/step_bs64.json > $R/step_bs64.txt 2>&1
echo "--- step bs64/16 rc $?"; grep -v "^#" $R/step_bs64.txt | tail -10
timeout 100 python3 scripts/step_probe.py --models mixtral --batches 1 --variant base \
  --variant off:minimoe.next_norm.SMALL=False --rounds 3 --steps 20 --json $R/step_mixtral.json > $R/step_mixtral.txt 2>&1
echo "--- step mixtral rc $?"; grep -v "^#" $R/step_mixtral.txt | tail -4
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for mb in olmoe:1 olmoe:64 qwen3:1 deepseek-v2-lite:64 mixtral:1; do
  m=${mb%:*}; bs=${mb#*:}
  [ $SECONDS -lt 540 ] && { timeout 75 python3 bench.py --model $m $B --bs $bs --json $R/bench_${m}_$bs.json \
    > $R/bench_${m}_$bs.txt 2>&1; echo "--- bench $m bs $bs rc $?"; grep -A1 "config  TTFT" $R/bench_${m}_$bs.txt | tail -1; }
done
tar czf $OUT/r.tgz -C $OUT r
