#!/usr/bin/env bash
# For the next call that lands on an H200 (the forty-sixth session's calls all ran on H100s), ~8 min: bench.py OLMoE
# bs 64 three times with today's code (issue 16's 15,000 out tok/s; the combine's unroll added +0.2% on the H100), then
# issue 16's last unseen cell (DeepSeek-V2, T=4096) against the tuner's full --tma search, 6 compile workers (12 do not
# fit an 80 GB card; the H200 has room, but the search alone needs more than 240 s).
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
timeout 400 python3 scripts/untuned_shapes.py --tma --workers 6 --shapes deepseek-v2 --buckets 4096 \
  --json $R/untuned_dsv2.json > $R/untuned_dsv2.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -3 $R/untuned_dsv2.txt | cut -c1-200
tar czf $OUT/r.tgz -C $OUT r
