#!/usr/bin/env bash
# Session 7, call 1 on nvidia-h200-x2 (~6 min): issue 15 with the tensor-parallel all-reduce as a switch
# (--allreduce nccl | symm: NCCL vs PyTorch's one-shot all-reduce over symmetric memory, multicast off).
#   Mixtral-8x7B, OLMoE, Qwen3-30B-A3B x bs 1 / 16 / 64: 1 GPU, TP2 nccl, TP2 symm, EP2 allgather, every plan checked
#   against one GPU first (fp32, 4 layers), the all-reduce micro-benchmark (NCCL vs symm, [T, 4096] bf16, graphs).
# Usage (device tool, repo root): bash scripts/gpu/session7_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R
MODELS="mixtral olmoe qwen3" DESIGNS="allgather" ALLREDUCE="nccl symm" bash scripts/gpu/parallel.sh $R/parallel
grep -E "exchange|check" $R/parallel/summary.txt | head -30
