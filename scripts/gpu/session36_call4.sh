#!/usr/bin/env bash
# Session 36, call 4 on nvidia-h200 (~6 min): what puts the bs-1 step in its slow state (Qwen3-30B-A3B ~2,477 against
# ~2,445 µs; OLMoE ~902 against ~886)? Call 3's alloc_probe (no prefill graph) was fast in every round; step_probe and
# bench (prefill graphs captured) slow. Here, with the GPU's clocks, temperature and power sampled every 100 ms:
# alloc_probe with the prefill graph in odd rounds; step_probe base; bench bs 1; alloc_probe again.
# Usage (device tool, repo root): bash scripts/gpu/session36_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active \
  --format=csv -lms 100 > $R/smi.csv 2>&1 &
SMI=$!
mark() { echo "$(date +%H:%M:%S.%N | cut -c1-12) $1" | tee -a $R/marks.txt; }
for m in qwen3 olmoe; do
  mark "alloc $m alternate start"
  timeout 200 python3 scripts/alloc_probe.py --model $m --batch 1 --rounds 8 --prefill-graph alternate \
    --json $R/alloc_${m}_alt.json 2>&1 | grep -v Warn | tee $R/alloc_${m}_alt.txt | cut -c1-80
  mark "alloc $m alternate end"
done
mark "step_probe start"
timeout 150 python3 scripts/step_probe.py --models qwen3 olmoe --batches 1 --input-len 128 --steps 60 --rounds 3 \
  --variant base --variant base2 --json $R/step_base.json 2>&1 | grep -v Warn | tee $R/step_base.txt | tail -5
mark "step_probe end"
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
mark "bench start"
timeout 90 python3 bench.py --model qwen3 $C --bs 1 --json $R/bench_qwen3_bs1.json > $R/bench_qwen3_bs1.txt 2>&1
grep -h 'minimoe bs' $R/bench_qwen3_bs1.txt | tr -s ' '
mark "bench end"
kill $SMI
tar czf $OUT/r.tgz -C $OUT r
