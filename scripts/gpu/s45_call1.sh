#!/usr/bin/env bash
# Forty-fifth session, call 1 (~6 min): issue 16's fused MoE on shapes no config lists (scripts/untuned_shapes.py; last
# run 2026-11-30, before the TMA tiles and the GEMM1 / GEMM2 overlap), the read-bandwidth probe with UNROLL tiles in
# flight (kernels/stream_read.py's grid, beside measure_ceilings), and bench.py OLMoE bs 64 three times (issue 16: >= 15,000 out tok/s).
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s45_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 scripts/untuned_shapes.py --tma --json $R/untuned.json > $R/untuned.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -4 $R/untuned.txt
tar czf $OUT/r.tgz -C $OUT r
sed -n "/<<'PY'/,/^PY$/p" scripts/gpu/s44_call4.sh | sed '1d;$d' > $R/probe.py
timeout 60 python3 $R/probe.py > $R/probe.txt 2>&1
echo "--- probe rc $? t=$SECONDS"; grep unroll $R/probe.txt | sort -t: -k2 -n | tail -4; grep measure_ceilings $R/probe.txt
tar czf $OUT/r.tgz -C $OUT r
for i in 1 2 3; do
  timeout 45 python3 bench.py --model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
    --json $R/bench_olmoe64_$i.json > $R/bench_olmoe64_$i.txt 2>&1
  echo "--- bench olmoe64 $i rc $? t=$SECONDS"; grep -E "ceilings|minimoe bs" $R/bench_olmoe64_$i.txt | tr -s ' '
  tar czf $OUT/r.tgz -C $OUT r
done
