#!/usr/bin/env bash
# Session 25, call 2 on nvidia-h200 (~9 min), the final code of call 1's prefill changes (the contiguous latent copy
# dropped: it cost more than it saved):
#  1. scripts/bench_mla_prefill.py: the rope kernel's warps and pair layout (82 µs a layer for ~13 µs of bytes), and
#     whether SDPA's output reaches wo without a copy;
#  2. bench.py, DeepSeek-V2-Lite bs 64 (issue 16's target: out tok/s counts the TTFT), then every GPU test;
#  3. bench.py OLMoE and Qwen3-30B-A3B bs 64 (their prefills use the chunked alignment) if time is left.
# Usage (device tool, repo root): bash scripts/gpu/session25_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 60 python3 scripts/bench_mla_prefill.py --json $R/mla_prefill.json > $R/mla_prefill.txt 2>&1
echo "--- mla rc $?"; cat $R/mla_prefill.txt
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 64"
timeout 150 python3 bench.py --model deepseek-v2-lite $B --json $R/bench_dsv2_64.json > $R/bench_dsv2_64.txt 2>&1
echo "--- bench dsv2 rc $?"; grep -A3 "config" $R/bench_dsv2_64.txt | head -4
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_mla_rope.py > $R/pytest_mla.txt 2>&1
echo "--- pytest mla rc $?"; tail -1 $R/pytest_mla.txt
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED" $R/pytest_gpu.txt | tail -5
for m in olmoe qwen3; do
  [ $SECONDS -lt 470 ] && { timeout 60 python3 bench.py --model $m $B --json $R/bench_${m}_64.json \
    > $R/bench_${m}_64.txt 2>&1; echo "--- bench $m rc $?"; grep -A3 "config" $R/bench_${m}_64.txt | head -4; }
done
tar czf $OUT/r.tgz -C $OUT r
