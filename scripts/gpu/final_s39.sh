#!/usr/bin/env bash
# Thirty-ninth session, call 4: the final code (GREEDY_RAW_LOGITS on): the GPU tests (graphed == eager on every family,
# the greedy tail, the persistent attention), then bench.py OLMoE at bs 1 / 16 / 64 and Qwen3-30B-A3B at bs 1 / 64; last,
# the persistent attention in Qwen3-30B-A3B's graphed bs-128 step (alone it ran 1.04-1.10x at B 128, call 1).
# Usage (device tool, repo root, nvidia-h200, ~5 min): bash scripts/gpu/final_s39.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 -m pytest -q tests/test_gpu.py tests/test_greedy.py tests/test_generate.py \
  tests/test_decode_attention_persistent.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
for m in olmoe qwen3; do
  BS=$([ $m = olmoe ] && echo "1 16 64" || echo "1 64")
  timeout 150 python3 bench.py --model $m --fused --bs $BS --input-len 128 --output-len 128 --warmup 1 --iters 3 \
    --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
  echo "--- bench $m rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_$m.txt
done
timeout 150 python3 scripts/step_probe.py --models qwen3 --batches 128 --input-len 128 --steps 30 --rounds 3 \
  --variant base --variant persist:minimoe.kernels.decode_attention.PERSISTENT=True --json $R/probe_qwen3_128.json \
  > $R/probe_qwen3_128.txt 2>&1
echo "--- probe qwen3 128 rc $? t=$SECONDS"; grep -v Warn $R/probe_qwen3_128.txt | tail -3
tar czf $OUT/r.tgz -C $OUT r
