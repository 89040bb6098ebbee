#!/usr/bin/env bash
# Session 25, call 3 on nvidia-h200 (~8 min): MLA's rope kernel with DeepSeek's interleaved pairs read and written as
# whole rows (mla_rope.SPLIT_PAIRS; call 2: 75 µs a layer at 8,192 tokens with stride-2 halves, 13.8 for the same
# bytes in "rotate half" order).
#  1. its tests on the GPU (bf16); scripts/bench_mla_prefill.py (split pairs vs stride-2);
#  2. the graphed prefill (bs 64) and decode step (bs 64, 1) of DeepSeek-V2-Lite: split pairs (base) vs stride-2;
#  3. bench.py DeepSeek-V2-Lite bs 64 / 16 / 1 on this code;
#  4. profile_step --aten: which ATen op launches prefill's 27 direct copies of ~50 µs.
# Usage (device tool, repo root): bash scripts/gpu/session25_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_mla_rope.py tests/test_gpu.py -k "deepseek or mla or split or absorbed" > $R/pytest_mla.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_mla.txt
timeout 60 python3 scripts/bench_mla_prefill.py --json $R/mla_prefill.json > $R/mla_prefill.txt 2>&1
echo "--- mla rc $?"; grep -v Warning $R/mla_prefill.txt | grep -v capture_end
timeout 120 python3 scripts/step_probe.py --prefill --models deepseek-v2-lite --batches 64 --variant base \
  --variant stride2:minimoe.kernels.mla_rope.SPLIT_PAIRS=False --rounds 3 --steps 5 \
  --json $R/prefill_rope.json > $R/prefill_rope.txt 2>&1
echo "--- probe prefill rc $?"; grep -v "^#" $R/prefill_rope.txt | tail -3
timeout 150 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 64 1 --variant base \
  --variant stride2:minimoe.kernels.mla_rope.SPLIT_PAIRS=False --rounds 3 --steps 30 \
  --json $R/step_rope.json > $R/step_rope.txt 2>&1
echo "--- probe decode rc $?"; grep -v "^#" $R/step_rope.txt | tail -5
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 64 16 1; do
  timeout 100 python3 bench.py --model deepseek-v2-lite $B --bs $bs --json $R/bench_dsv2_$bs.json \
    > $R/bench_dsv2_$bs.txt 2>&1; echo "--- bench bs $bs rc $?"; grep -A1 "config  TTFT" $R/bench_dsv2_$bs.txt | tail -1
done
[ $SECONDS -lt 500 ] && { timeout 90 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 64 --steps 3 \
  --aten > $R/prof_aten.txt 2>&1; echo "--- aten rc $?"; grep -A40 "by ATen op" $R/prof_aten.txt | head -45; }
tar czf $OUT/r.tgz -C $OUT r
