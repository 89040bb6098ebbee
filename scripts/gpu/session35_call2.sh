#!/usr/bin/env bash
# Session 35, call 2 on nvidia-h200 (~8 min), with call 1's merged tables (2,048 / 8,192 tokens, DeepSeek-V2-Lite and
# OLMoE) in the tree:
# 1. which ATen ops launch DeepSeek-V2-Lite's eager bs-64 prefill copies, and SDPA's output layout (probe);
# 2. torch's grouped GEMM (`torch._grouped_mm`) against the aligned fused MoE at 8,192 prefill tokens (probe);
# 3. scripts/tune_fused_moe.py --tma --merge on every bf16 preset at 1,024-16,384 tokens (the prefill buckets);
# 4. bench.py DeepSeek-V2-Lite bs 64 twice and OLMoE bs 64 with the merged tables, if time is left.
# Usage (device tool, repo root): bash scripts/gpu/session35_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 scripts/gpu/session35_probe_copies.py > $R/probe_copies.txt 2>&1
echo "--- probe copies rc $? t=$SECONDS"; grep -v Warn $R/probe_copies.txt | head -30
for s in 64,2048,1408,6 64,2048,1024,8; do
  timeout 90 python3 scripts/gpu/session35_probe_grouped_mm.py --shape $s > $R/probe_gmm_$s.txt 2>&1
  echo "--- probe grouped_mm $s rc $? t=$SECONDS"; cat $R/probe_gmm_$s.txt | grep -v Warn | tail -9
done
timeout 300 python3 scripts/tune_fused_moe.py --presets dsv2lite olmoe qwen3 qwen15 mixtral \
  --buckets 1024 2048 4096 8192 16384 --tma --merge --workers 14 > $R/tune.txt 2>&1
echo "--- tune rc $? t=$SECONDS"; grep -E "T= |wrote|total|precompiled" $R/tune.txt
mkdir -p $R/configs; cp minimoe/kernels/configs/*bfloat16.json $R/configs/
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for mt in "deepseek-v2-lite a" "olmoe a" "deepseek-v2-lite b"; do
  set -- $mt
  [ $SECONDS -gt 520 ] && { echo "bench $1 $2: skipped (time)"; continue; }
  timeout 60 python3 bench.py --model $1 $C --bs 64 --json $R/bench_$1_$2.json > $R/bench_$1_$2.txt 2>&1
  echo "--- $1 $2 rc $? t=$SECONDS: $(grep -h 'minimoe bs' $R/bench_$1_$2.txt | tr -s ' ')"
done
tar czf $OUT/r.tgz -C $OUT r
