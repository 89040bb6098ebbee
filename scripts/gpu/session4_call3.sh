#!/usr/bin/env bash
# Session 4, call 3 on nvidia-h200-x2 (~7 min), two lanes, one per GPU:
#  GPU 0: the five models x bs 1 / 16 / 64, 128/128, with this code (models_*.json) and then with the landed
#         code (HEAD ed6a46b, unpacked in .baseline/; old_*.json), one after the other on this GPU, the same
#         measured ceilings for both; then the graphed-step profile of OLMoE and Qwen3-30B-A3B at bs 1.
#  GPU 1: GPU tests (the new kernels; graphed == eager for every family); the speculative sweep
#         (Qwen3-30B-A3B + Qwen3-0.6B, bs 1 / 16 / 64, G 1 / 4) with the multi-token decode attention.
# Usage (device tool, repo root): bash scripts/gpu/session4_call3.sh   (carry .baseline)
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt 2>&1
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 16 64"
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 90 python3 bench.py --model olmoe $B --json $R/models_olmoe_128.json > $R/models_olmoe_128.txt 2>&1
  python3 -c "import json;c=json.load(open('$R/models_olmoe_128.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
  for m in qwen3 qwen1.5-moe deepseek-v2-lite mixtral; do
    timeout 100 python3 bench.py --model $m $B --ceilings $R/ceil.json --json $R/models_${m}_128.json > $R/models_${m}_128.txt 2>&1
  done
  for m in olmoe qwen3 qwen1.5-moe deepseek-v2-lite mixtral; do
    (cd .baseline && PYTHONPATH=$PWD timeout 100 python3 bench.py --model $m $B --ceilings $R/ceil.json \
      --json $R/old_${m}_128.json > $R/old_${m}_128.txt 2>&1)
  done
  for m in olmoe qwen3; do
    timeout 60 python3 scripts/profile_step.py --model $m --bs 1 --steps 20 --json $R/prof_${m}_bs1.json > $R/prof_${m}_bs1.txt 2>&1
  done
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_mla_rope.py tests/test_gate_splitk.py \
    tests/test_decode_attention.py tests/test_small_kernels.py tests/test_ops.py > $R/kernel_tests.log 2>&1
  echo "rc=$?" >> $R/kernel_tests.log
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_speculative.py > $R/gpu_tests.log 2>&1
  echo "rc=$?" >> $R/gpu_tests.log
  timeout 240 python3 scripts/bench_spec.py sweep --out $R/spec --batches 1 16 64 --gammas 1 4 \
    --drafts Qwen3-0.6B > $R/spec_sweep.log 2>&1
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
tail -n 3 $R/kernel_tests.log $R/gpu_tests.log
grep -h "minimoe bs" $R/models_*.txt $R/old_*.txt; grep -h "^## " $R/prof_*.txt; grep -h "run G\|T_T" $R/spec_sweep.log | head -20
