#!/usr/bin/env bash
# Session 7, call 3 on nvidia-h200-x2 (~6 min): call 2 again, keeping its tables this time (the device tool does not
# return file names with '=' or ','; they come back in configs.tgz), and timing TP2 with exactly those tables.
#  1. scripts/tune_fused_moe.py --presets mixtral-tp2 | qwen3-tp2 olmoe-tp2 (one GPU each) -> $OUT/configs.tgz;
#  2. scripts/gpu/parallel.sh: Mixtral and Qwen3 (1 GPU, TP2 nccl, TP2 symm), OLMoE (also EP2 allgather and the
#     exchange micro-benchmark), every plan checked against one GPU first (TP2 rows name their --allreduce).
# Usage (device tool, repo root): bash scripts/gpu/session7_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 scripts/tune_fused_moe.py --presets mixtral-tp2 --workers 8 > $R/tune_mixtral_tp2.txt 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 150 python3 scripts/tune_fused_moe.py --presets qwen3-tp2 olmoe-tp2 --workers 8 \
  > $R/tune_qwen3_olmoe_tp2.txt 2>&1 &
wait
grep -hE "T=|wrote" $R/tune_*.txt
tar czf $OUT/configs.tgz $(grep -h "^wrote" $R/tune_*.txt | cut -d' ' -f2 | sed "s|^$PWD/||")
tar tzf $OUT/configs.tgz
MODELS="mixtral qwen3" DESIGNS="" ALLREDUCE="nccl symm" bash scripts/gpu/parallel.sh $R/parallel > /dev/null 2>&1
MODELS="olmoe" DESIGNS="allgather" ALLREDUCE="nccl symm" bash scripts/gpu/parallel.sh $R/parallel_olmoe > /dev/null 2>&1
grep -E "^(plan|1 GPU|TP2|EP2|target|# check)" $R/parallel/summary.txt $R/parallel_olmoe/summary.txt
grep -E "# exchange" $R/parallel_olmoe/summary.txt
