#!/usr/bin/env bash
# Session 4, call 2 on nvidia-h200-x2 (~9 min), two independent lanes, one per GPU:
#  GPU 0: decode-attention split sweep; router micro-benchmark; profiles of the new MLA step (bs 1, 64);
#         speculative sweep (Qwen3-30B-A3B + Qwen3-0.6B, bs 1 / 16, G 1 / 4) with the multi-token kernel.
#  GPU 1: GPU tests of the new kernels and graphed == eager for every family; then DeepSeek-V2-Lite
#         before (HEAD ed6a46b, unpacked in .baseline/) and after, one after the other on that GPU.
# Usage (device tool, repo root): bash scripts/gpu/session4_call2.sh   (carry .baseline)
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt 2>&1
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 90 python3 scripts/bench_attn_splits.py --json $R/attn_splits.json > $R/attn_splits.txt 2>&1
  timeout 80 python3 scripts/bench_router.py --json $R/router.json > $R/router.txt 2>&1
  for b in 1 64; do
    timeout 70 python3 scripts/profile_step.py --model deepseek-v2-lite --bs $b --steps 20 \
      --json $R/prof_dsv2_bs$b.json > $R/prof_dsv2_bs$b.txt 2>&1
  done
  timeout 200 python3 scripts/bench_spec.py sweep --out $R/spec --batches 1 16 --gammas 1 4 \
    --drafts Qwen3-0.6B > $R/spec_sweep.log 2>&1
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_mla_rope.py tests/test_gate_splitk.py \
    tests/test_decode_attention.py tests/test_ops.py > $R/kernel_tests.log 2>&1; echo "rc=$?" >> $R/kernel_tests.log
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py > $R/gpu_tests.log 2>&1
  echo "rc=$?" >> $R/gpu_tests.log
  B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
  timeout 100 python3 bench.py --model deepseek-v2-lite --bs 1 64 $B --json $R/new_dsv2.json > $R/new_dsv2.txt 2>&1
  python3 -c "import json;c=json.load(open('$R/new_dsv2.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
  (cd .baseline && PYTHONPATH=$PWD timeout 100 python3 bench.py --model deepseek-v2-lite --bs 1 64 $B \
    --ceilings $R/ceil.json --json $R/old_dsv2.json > $R/old_dsv2.txt 2>&1)
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
tail -n 3 $R/kernel_tests.log $R/gpu_tests.log; cat $R/attn_splits.txt; tail -n 45 $R/router.txt
grep -h "^## " $R/prof_*.txt; grep -h "minimoe bs" $R/*_dsv2.txt; grep -h "run G\|T_T" $R/spec_sweep.log | head
