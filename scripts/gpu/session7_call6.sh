#!/usr/bin/env bash
# Session 7, call 6 on nvidia-h200-x2 (~5 min): the final code on the user's path.
#  1. GPU tests (graphed == eager for every family; decode attention incl. the tiles override), one GPU;
#  2. torchrun bench.py Mixtral-8x7B --tp 2 --bs 1 with the default --allreduce (auto: symm on one node) and with nccl.
# Usage (device tool, repo root): bash scripts/gpu/session7_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_decode_attention.py \
  > $R/pytest_gpu.txt 2>&1
tail -3 $R/pytest_gpu.txt
C="bench.py --model mixtral --fused --tp 2 --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64"
timeout 100 torchrun --standalone --nproc-per-node 2 $C --json $R/mixtral_tp2_auto.json > $R/mixtral_tp2_auto.txt 2>&1
echo "auto rc $?"
timeout 100 torchrun --standalone --nproc-per-node 2 $C --allreduce nccl --json $R/mixtral_tp2_nccl.json > $R/mixtral_tp2_nccl.txt 2>&1
echo "nccl rc $?"
grep -ho "allreduce=[a-z]*" $R/mixtral_tp2_*.txt
grep -h "minimoe bs" $R/mixtral_tp2_*.txt
