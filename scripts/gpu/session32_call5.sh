#!/usr/bin/env bash
# Session 32, call 5 on nvidia-h200 (~8 min): the final defaults (split rope kernel, embedding gather in the first
# layer's fold, merge partials as one tile; the hoisted gate tile off): bench.py bs 1 (128 / 128) on DeepSeek-V2-Lite,
# Qwen1.5-MoE and Mixtral, OLMoE bs 64 against the session's start (587ff44, .base_s32.tar, carried); then every
# `-m gpu` test.
# Usage (device tool, repo root, carry .base_s32.tar): bash scripts/gpu/session32_call5.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
B=/tmp/base; rm -rf $B; mkdir -p $B && tar xf .base_s32.tar -C $B && ln -s $PWD/models $B/models
A="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
run() {  # tag tree model bs
  local tag=$1 tree=$2 m=$3 bs=$4
  (cd $tree && PYTHONPATH=$tree timeout 100 python3 bench.py --model $m $A --bs $bs \
     --json $R/bench_${m}_bs${bs}_$tag.json > $R/bench_${m}_bs${bs}_$tag.txt 2>&1)
  echo "--- $m bs$bs $tag rc $? t=$SECONDS"
  python3 - $R/bench_${m}_bs${bs}_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run new $PWD olmoe 64
run base $B olmoe 64
run new $PWD deepseek-v2-lite 1
run new $PWD qwen1.5-moe 1
run new $PWD mixtral 1
echo "--- pytest -m gpu from t=$SECONDS"
PYTHONPATH=$PWD timeout $((560 - SECONDS)) python3 -m pytest -q -m gpu > $R/pytest_gpu.txt 2>&1; echo "--- pytest rc $?"
tail -4 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
