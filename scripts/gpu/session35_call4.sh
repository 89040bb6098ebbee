#!/usr/bin/env bash
# Session 35, call 4 on nvidia-h200 (~5 min): the 128-token bucket (bs-1 prefill of a 128-token prompt) retuned with
# b_tma candidates in every regime (scripts/tune_fused_moe.py --tma --merge --buckets 128, five bf16 presets), then
# bench.py bs 1 with the tables before (call 2's) and after, alternating: Qwen3-30B-A3B twice, OLMoE once; then
# scripts/profile_step.py on Qwen3-30B-A3B bs 1 (prefill and decode kernel tables) with the new tables.
# Usage (device tool, repo root): bash scripts/gpu/session35_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R/before $R/after
CFG=minimoe/kernels/configs
cp $CFG/*bfloat16.json $R/before/
timeout 200 python3 scripts/tune_fused_moe.py --presets qwen3 olmoe dsv2lite qwen15 mixtral --buckets 128 --tma \
  --merge --workers 14 > $R/tune.txt 2>&1
echo "--- tune rc $? t=$SECONDS"; grep -E "T= |total|precompiled" $R/tune.txt
cp $CFG/*bfloat16.json $R/after/
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for mt in "qwen3 before a" "qwen3 after a" "olmoe before a" "olmoe after a" "qwen3 before b" "qwen3 after b"; do
  set -- $mt
  [ $SECONDS -gt 400 ] && { echo "$1 $2 $3: skipped (time)"; continue; }
  cp $R/$2/*.json $CFG/
  timeout 60 python3 bench.py --model $1 $C --bs 1 --json $R/bench_$1_$2_$3.json > $R/bench_$1_$2_$3.txt 2>&1
  echo "--- $1 $2 $3 rc $? t=$SECONDS: $(grep -h 'minimoe bs' $R/bench_$1_$2_$3.txt | tr -s ' ')"
done
cp $R/after/*.json $CFG/
[ $SECONDS -lt 450 ] && timeout 100 python3 scripts/profile_step.py --model qwen3 --bs 1 --steps 10 \
  --json $R/prof_qwen3_bs1.json > $R/prof_qwen3_bs1.txt 2>&1
echo "--- profile rc $? t=$SECONDS"
rm -rf $R/before
tar czf $OUT/r.tgz -C $OUT r
