#!/usr/bin/env bash
# Session 27, call 1 on nvidia-h200 (~9 min): the next layer's RMSNorm inside the MoE's last launch (--fuse-next-norm).
#  1. GPU tests: the new kernels (tests/test_next_norm.py on the GPU), the fused MoE / shared fusion, then every
#     `-m gpu` test (graphed == eager greedy tokens on every tiny family: the fold is on by default there);
#  2. graphed decode step at bs 1 (DeepSeek-V2-Lite, OLMoE, Qwen3-30B-A3B): fold on (base) / the decode variant off;
#  3. bench.py DeepSeek-V2-Lite bs 1 (issue 16: 493.7 / 500 out tok/s).
# Usage (device tool, repo root): bash scripts/gpu/session27_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_next_norm.py tests/test_shared_fusion.py \
  tests/test_fused_moe.py > $R/pytest_new.txt 2>&1
echo "--- pytest new rc $?"; tail -1 $R/pytest_new.txt; grep -E "^(FAILED|E )" $R/pytest_new.txt | head
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
timeout 190 python3 scripts/step_probe.py --models deepseek-v2-lite olmoe qwen3 --batches 1 --variant base \
  --variant off:minimoe.next_norm.SMALL=False --rounds 3 --steps 30 --json $R/step_bs1.json > $R/step_bs1.txt 2>&1
echo "--- step bs1 rc $?"; grep -v "^#" $R/step_bs1.txt | tail -8
[ $SECONDS -lt 530 ] && { timeout 60 python3 bench.py --model deepseek-v2-lite --fused --warmup 1 --iters 3 --input-len 128 \
  --output-len 128 --bs 1 --json $R/bench_dsv2_1.json > $R/bench_dsv2_1.txt 2>&1; echo "--- bench rc $?"; \
  grep -A1 "config  TTFT" $R/bench_dsv2_1.txt | tail -1; }
tar czf $OUT/r.tgz -C $OUT r
