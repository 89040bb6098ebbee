#!/usr/bin/env bash
# Session 37, call 9 on nvidia-h200 (~6 min): call 8 found bench.py bs 1 fast with the PDL mark after the prefill
# output's clone (Qwen3-30B-A3B 402.7, OLMoE 1,104.1 out tok/s against 397.0 / 1,088.0 without). The README's five
# models x bs 1 / 16 / 64 with this code (issue 16 item 4); Qwen3-30B-A3B and OLMoE again with the mark off (the
# previous code) for the same-run A/B at every batch; then the GPU tests of the mark and the live loop.
# Usage (device tool, repo root): bash scripts/gpu/session37_call9.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 16 64"
for m in qwen3 olmoe deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 150 python3 bench.py --model $m $C --json $R/bench_${m}.json > $R/bench_${m}.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}.txt | tr -s ' '
done
for m in qwen3 olmoe; do
  [ $SECONDS -gt 330 ] && break
  timeout 100 python3 scripts/bench_knob.py "minimoe.graphs.PDL_MARK=''" -- --model $m $C --json $R/bench_${m}_markoff.json \
    > $R/bench_${m}_markoff.txt 2>&1
  echo "--- $m mark off rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_markoff.txt | tr -s ' '
done
if [ $SECONDS -lt 390 ]; then
  timeout $((440 - SECONDS)) python3 -m pytest -q tests/test_gpu.py -k "pdl_mark or live_token or with_pdl" > $R/pytest_gpu.txt 2>&1
  echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest_gpu.txt
fi
tar czf $OUT/r.tgz -C $OUT r
