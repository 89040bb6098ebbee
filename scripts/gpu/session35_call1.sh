#!/usr/bin/env bash
# Session 35, call 1 on nvidia-h200 (~9 min): the aligned fused MoE's weight tiles through TMA descriptors (`b_tma`).
# 1. the b_tma tests on the GPU (fp32 / fp16 against the oracle and the pointer loads; the shared expert ignoring it);
# 2. bench.py DeepSeek-V2-Lite and OLMoE bs 16 / 64 with the tables as landed (prefill of 2,048 / 8,192 tokens);
# 3. scripts/tune_fused_moe.py --tma --merge at 2,048 and 8,192 tokens for both shapes (pointer and TMA candidates in
#    one search; the tables written in place and copied to $OUT);
# 4. bench.py again with the merged tables (same machine, same process order), if time is left.
# Usage (device tool, repo root): bash scripts/gpu/session35_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 120 python3 -m pytest -q tests/test_fused_moe.py tests/test_shared_fusion.py -k "tma" > $R/pytest_tma.txt 2>&1
echo "--- pytest tma rc $? t=$SECONDS: $(tail -1 $R/pytest_tma.txt)"
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
bench() {  # $1 tag
  for m in deepseek-v2-lite olmoe; do
    timeout 100 python3 bench.py --model $m $C --bs 16 64 --json $R/bench_${m}_$1.json > $R/bench_${m}_$1.txt 2>&1
    echo "--- $m $1 rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_$1.txt | tr -s ' '
  done
}
bench before
timeout 330 python3 scripts/tune_fused_moe.py --presets dsv2lite olmoe --buckets 2048 8192 --tma --merge --workers 14 \
  > $R/tune.txt 2>&1
echo "--- tune rc $? t=$SECONDS"; grep -E "T= |wrote|total|precompiled" $R/tune.txt
mkdir -p $R/configs; cp minimoe/kernels/configs/E=64,I=1408,D=2048,K=6,*bfloat16.json \
  minimoe/kernels/configs/E=64,I=1024,D=2048,K=8,*bfloat16.json $R/configs/
[ $SECONDS -lt 430 ] && bench after || echo "bench after: skipped (time)"
tar czf $OUT/r.tgz -C $OUT r
