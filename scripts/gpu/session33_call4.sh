#!/usr/bin/env bash
# Session 33, call 4 on nvidia-h200 (~6 min): this step's cos / sin rows gathered once a forward and read by token in
# the q/k norm + rope kernel (minimoe.rope.STEP_ROWS; kernels/rope.py `rows`): its GPU tests; the graphed decode step of
# Qwen3-30B-A3B bs 1 and OLMoE bs 1 / 64 with it; bench.py Qwen3-30B-A3B bs 1 (defaults, rows) and OLMoE bs 1 / 64
# (defaults); then the `-m gpu` graph tests (graphed == eager on every tiny family, the attention's graph replays) on this
# tree's defaults (EARLY_TILE on); the full `-m gpu` suite did not fit the session's device time.
# Usage (device tool, repo root): bash scripts/gpu/session33_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 120 python3 -m pytest -q tests/test_step_rows.py tests/test_small_kernels.py -k "rope or rows" > $R/pytest_rows.txt 2>&1
echo "--- pytest rows rc $? t=$SECONDS"; tail -2 $R/pytest_rows.txt
S=minimoe.rope.STEP_ROWS
probe() {  # tag model batches variants...
  local tag=$1 m=$2 b=$3; shift 3
  timeout 150 python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 \
    --rounds 3 --variant base "$@" --variant base2 --json $R/step_$tag.json > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -7
}
probe qwen3_bs1 qwen3 1 --variant rows:$S=True
probe olmoe olmoe "1 64" --variant rows:$S=True
AR="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
run() {  # tag model bs [knobs...]
  local tag=$1 m=$2 bs=$3; shift 3
  timeout 120 python3 scripts/with_knobs.py "$@" -- bench.py --model $m $AR --bs $bs \
     --json $R/bench_${m}_bs${bs}_$tag.json > $R/bench_${m}_bs${bs}_$tag.txt 2>&1
  echo "--- $m bs$bs $tag rc $? t=$SECONDS"
  python3 - $R/bench_${m}_bs${bs}_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run new qwen3 1
run rows qwen3 1 $S=True
run new olmoe 1
run new olmoe 64
timeout 170 python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_decode_attention.py -k "graph" > $R/pytest_gpu.txt 2>&1
echo "--- pytest -m gpu (graphs) rc $? t=$SECONDS"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
