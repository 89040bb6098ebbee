#!/usr/bin/env bash
# Session 3, call 2 on nvidia-h200-x2 (~4.5 min): issue 15's plans on both GPUs (trimmed: OLMoE and Mixtral,
# bs 1 and 64, allgather and padded designs, 64 new tokens), then on GPU 0 alone: issue 14's speculative
# decoding (trimmed grid) and issue 10's ragged-prompt headline and GPU tests.
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$OUT/r; mkdir -p $R
MODELS="olmoe mixtral" BS="1 64" DESIGNS="allgather padded" OUT_LEN=64 timeout 170 bash scripts/gpu/parallel.sh $R/parallel
export CUDA_VISIBLE_DEVICES=0
timeout 50 python3 scripts/bench_spec.py check --out $R/spec > $R/spec_check.log 2>&1; echo "check rc=$?" >> $R/spec_check.log
timeout 80 python3 scripts/bench_spec.py sweep --out $R/spec --drafts Qwen3-0.6B --batches 1 16 --gammas 1 2 4 6 --n-out 64 --iters 1 > $R/spec_sweep.log 2>&1; echo "sweep rc=$?" >> $R/spec_sweep.log
timeout 40 python3 scripts/bench_spec.py trained --out $R/spec --batches 1 16 --gammas 1 2 4 8 --n-out 64 --iters 1 > $R/spec_trained.log 2>&1; echo "trained rc=$?" >> $R/spec_trained.log
B="--fused --warmup 1 --iters 3 --output-len 128"
timeout 40 python3 bench.py --model olmoe --bs 64 --input-len-dist uniform:64-192 $B --json $R/ragged.json > $R/ragged.txt 2>&1
timeout 40 python3 -m pytest -q -m gpu tests/test_gpu.py -k ragged -p no:cacheprovider > $R/gpu_ragged.log 2>&1
tar czf $OUT/results.tgz -C $OUT r
cat $R/parallel/summary.txt | grep -E "PASS|MISS|FAIL|^TP2|^EP2|^1 GPU" | head -40; tail -3 $R/spec_*.log; grep "minimoe bs" $R/ragged.txt; tail -2 $R/gpu_ragged.log
