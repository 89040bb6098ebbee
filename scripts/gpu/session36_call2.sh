#!/usr/bin/env bash
# Session 36, call 2 on nvidia-h200 (~8 min): (1) the decode loop with the graph's own token buffer passed back
# (decode(own=False), bench.py's timed loop now) against the copy + clone loop: graph_boundary_probe.py, Qwen3-30B-A3B
# and OLMoE bs 1; (2) the K / V cache read and written with L2 evict_last (decode_attention.KV_EVICT, rope.KV_EVICT)
# inside the graphed step: step_probe.py, Qwen3-30B-A3B / OLMoE bs 1, OLMoE bs 64; (3) bench.py bs 1 on both with the
# new loop; (4) GPU tests of the new loop and the greedy kernel.
# Usage (device tool, repo root): bash scripts/gpu/session36_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git rev-parse HEAD > $R/git_head.txt 2>/dev/null
timeout 150 python3 scripts/graph_boundary_probe.py --models qwen3 olmoe --batches 1 --rounds 3 \
  --json $R/boundary_bs1.json 2>&1 | grep -v Warn | tee $R/boundary_bs1.txt
echo "--- t=$SECONDS"
KV="minimoe.kernels.decode_attention.KV_EVICT='evict_last'"
KVS="minimoe.kernels.rope.KV_EVICT='evict_last'"
V="--variant base --variant kvload:$KV --variant kv:$KV,$KVS --variant base2"
timeout 200 python3 scripts/step_probe.py --models qwen3 olmoe --batches 1 --input-len 128 --steps 60 --rounds 3 \
  $V --json $R/step_kv_bs1.json 2>&1 | grep -v Warn | tee $R/step_kv_bs1.txt | tail -12
echo "--- t=$SECONDS"
timeout 120 python3 scripts/step_probe.py --models olmoe --batches 64 --input-len 128 --steps 40 --rounds 3 \
  $V --json $R/step_kv_bs64.json 2>&1 | grep -v Warn | tee $R/step_kv_bs64.txt | tail -6
echo "--- t=$SECONDS"
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for m in qwen3 olmoe; do
  timeout 90 python3 bench.py --model $m $C --bs 1 --json $R/bench_${m}_bs1.json > $R/bench_${m}_bs1.txt 2>&1
  echo "--- bench $m rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_bs1.txt | tr -s ' '
done
timeout $((570 - SECONDS)) python3 -m pytest -q tests/test_gpu.py tests/test_greedy.py -k "live or greedy or with_pdl" \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
