#!/usr/bin/env bash
# For the next call that lands on an H200 (the forty-sixth session's calls all ran on H100s), ~8 min: bench.py OLMoE
# bs 64 three times with today's code (issue 16's 15,000 out tok/s; the combine's unroll added +0.2% on the H100), then
# issue 16's unseen shapes at T=4096 where the rule now takes its TMA prefill tiles (512+ rows an expert: Qwen2-57B,
# Phi-3.5-MoE, granite; 0.96 / 0.90 / 0.94 of the tuner's best on 2026-12-05 before). The last unseen cell (DeepSeek-V2,
# T=4096, 154 rows an expert: the rule unchanged there) needs a call of its own: its --tma search alone runs past 240 s
#   python3 scripts/untuned_shapes.py --tma --workers 6 --shapes deepseek-v2 --buckets 4096
# Usage (device tool, repo root, an H200): bash scripts/gpu/pending_h200_s46.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
for i in 1 2 3; do
  timeout 50 python3 bench.py --model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
    --json $R/bench_olmoe64_$i.json > $R/bench_olmoe64_$i.txt 2>&1
  echo "--- bench olmoe64 $i rc $? t=$SECONDS"; grep -E "ceilings|minimoe bs" $R/bench_olmoe64_$i.txt | tr -s ' '
  tar czf $OUT/r.tgz -C $OUT r
done
timeout 400 python3 scripts/untuned_shapes.py --tma --workers 6 --shapes qwen2-57b phi3.5-moe granite-3b --buckets 4096 \
  --json $R/untuned_4096.json > $R/untuned_4096.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -4 $R/untuned_4096.txt | cut -c1-200
tar czf $OUT/r.tgz -C $OUT r
