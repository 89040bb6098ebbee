#!/usr/bin/env bash
# Thirty-ninth session, call 4: the final code (GREEDY_RAW_LOGITS on): the GPU tests (graphed == eager on every family,
# the greedy tail, the persistent attention), then bench.py OLMoE and Qwen3-30B-A3B at bs 1 / 16 / 64.
# Usage (device tool, repo root, nvidia-h200, ~5 min): bash scripts/gpu/final_s39.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 -m pytest -q tests/test_gpu.py tests/test_greedy.py tests/test_generate.py \
  tests/test_decode_attention_persistent.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
for m in olmoe qwen3; do
  timeout 150 python3 bench.py --model $m --fused --bs 1 16 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
    --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
  echo "--- bench $m rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_$m.txt
done
tar czf $OUT/r.tgz -C $OUT r
