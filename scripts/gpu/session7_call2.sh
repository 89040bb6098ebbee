#!/usr/bin/env bash
# Session 7, call 2 on nvidia-h200-x2 (~5 min): tuned fused-MoE tables for the tensor-parallel shards (every expert
# split on its width under --tp 2: Mixtral I 7168, Qwen3-30B-A3B I 384, OLMoE I 512), then TP2 re-timed with them.
#  1. scripts/untuned_shapes.py on the shards: the default rule vs the tuner's best, same GPU (one GPU per process);
#  2. scripts/tune_fused_moe.py --presets *-tp2: the JSON tables (copied to $OUT/r/configs);
#  3. scripts/gpu/parallel.sh for Mixtral and Qwen3: 1 GPU, TP2 nccl, TP2 symm (no EP2 rows), checked first.
# Usage (device tool, repo root): bash scripts/gpu/session7_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R/configs
B="1 8 16 32 64 128 4096"
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 scripts/untuned_shapes.py --shapes mixtral-tp2 --buckets $B --workers 8 \
  --json $R/shards_mixtral.json > $R/shards_mixtral.txt 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 150 python3 scripts/untuned_shapes.py --shapes qwen3-tp2 olmoe-tp2 --buckets $B --workers 8 \
  --json $R/shards_qwen3_olmoe.json > $R/shards_qwen3_olmoe.txt 2>&1 &
wait
cat $R/shards_*.txt | grep -v "^ \|precompiled"
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 scripts/tune_fused_moe.py --presets mixtral-tp2 --workers 8 > $R/tune_mixtral_tp2.txt 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 200 python3 scripts/tune_fused_moe.py --presets qwen3-tp2 olmoe-tp2 --workers 8 \
  > $R/tune_qwen3_olmoe_tp2.txt 2>&1 &
wait
grep -hE "T=|wrote" $R/tune_*.txt
cp $(grep -h "^wrote" $R/tune_*.txt | cut -d' ' -f2) $R/configs/ 2>/dev/null; ls $R/configs
MODELS="mixtral qwen3" DESIGNS="" ALLREDUCE="nccl symm" bash scripts/gpu/parallel.sh $R/parallel > /dev/null 2>&1
grep -E "^(plan|1 GPU|TP2|target|# check)" $R/parallel/summary.txt
