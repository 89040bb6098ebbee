#!/usr/bin/env bash
# Session 11, call 1 on nvidia-h200-x2 (~3 min, the session's last device minutes): Mixtral-8x7B TP2 at batch 1,
# --pdl off against --pdl on (the measurement docs/parallelism.md asked of the first two-GPU session after PDL),
# interleaved off / on / off / on on the same machine, default --allreduce (symm on one node).
# Each run writes its own file straight into $OUT so whatever finished comes back if the lease runs out.
# Usage (device tool, repo root): bash scripts/gpu/session11_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/gpu.txt
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
C="--fused --bs 1 --warmup 1 --iters 2 --input-len 128 --output-len 64 --ceilings docs/results/2026-11-30-s8/call5_x2/ceil.json"
for r in 1 2; do
  for p in off on; do
    timeout 100 torchrun --standalone --nproc-per-node 2 bench.py --model mixtral $C --tp 2 --pdl $p \
      > $OUT/mixtral_tp2_pdl${p}_$r.txt 2>&1
    echo "round $r pdl $p rc $?: $(grep 'minimoe bs' $OUT/mixtral_tp2_pdl${p}_$r.txt)"
  done
done
