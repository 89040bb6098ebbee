#!/usr/bin/env bash
# (At this commit graphs.PDL_MARK was a bool; it is a string since: "after" | "before" | "".)
# Session 37, call 7 on nvidia-h200 (~5 min): call 6 found one host-launched PDL kernel after the graphed prefill
# restores the fast decode step. graphs.PrefillGraph.run now launches one (kernels/pdl.py pdl_mark). bench.py bs 1
# with the mark off (graphs.PDL_MARK=False, the previous code) and on, alternating, Qwen3-30B-A3B and OLMoE; then
# the GPU tests.
# Usage (device tool, repo root): bash scripts/gpu/session37_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for m in qwen3 olmoe; do
  for k in off on off on; do
    K=$([ $k = off ] && echo "minimoe.graphs.PDL_MARK=False" || echo "minimoe.graphs.PDL_MARK=True")
    timeout 100 python3 scripts/bench_knob.py $K -- --model $m $C --json $R/bench_${m}_mark$k.$SECONDS.json \
      > $R/bench_${m}_mark$k.$SECONDS.txt 2>&1
    echo "--- $m mark $k rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_mark$k.*.txt | tail -1 | tr -s ' '
  done
done
timeout $((560 - SECONDS)) python3 -m pytest -q tests/test_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
