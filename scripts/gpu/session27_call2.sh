#!/usr/bin/env bash
# Session 27, call 2 on nvidia-h200 (~8 min): the next-norm fold's aligned variant at bs 64 / 16, the fixed tests.
#  1. graphed decode step, fold on (base) / the aligned variant off: DeepSeek-V2-Lite and OLMoE at bs 64 and 16
#     (the decode variant is off since call 1);
#  2. GPU tests: tests/test_next_norm.py, the graphed == eager tests of the fold and of the fused shared expert (call 1's
#     failures: the shared-expert tests counted shared_fusion.run, which the fold bypasses; they now pin it off);
#  3. bench.py (128 / 128): DeepSeek-V2-Lite bs 1 (the decode variant off again), OLMoE bs 64.
# Usage (device tool, repo root): bash scripts/gpu/session27_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 180 python3 scripts/step_probe.py --models deepseek-v2-lite olmoe --batches 64 16 --variant base \
  --variant off:minimoe.next_norm.ALIGNED=False --rounds 3 --steps 20 --json $R/step_bs64.json > $R/step_bs64.txt 2>&1
echo "--- step bs64/16 rc $?"; grep -v "^#" $R/step_bs64.txt | tail -10
timeout 170 python3 -m pytest -q -p no:cacheprovider -rf tests/test_next_norm.py tests/test_gpu.py \
  -k "next_norm or fused_shared" > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for mb in deepseek-v2-lite:1 olmoe:64; do
  m=${mb%:*}; bs=${mb#*:}
  [ $SECONDS -lt 520 ] && { timeout 70 python3 bench.py --model $m $B --bs $bs --json $R/bench_${m}_$bs.json \
    > $R/bench_${m}_$bs.txt 2>&1; echo "--- bench $m bs $bs rc $?"; grep -A1 "config  TTFT" $R/bench_${m}_$bs.txt | tail -1; }
done
tar czf $OUT/r.tgz -C $OUT r
