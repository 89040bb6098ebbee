#!/usr/bin/env bash
# Session 7, call 7 on nvidia-h200-x2 (~2 min): after the fresh-user review, --allreduce symm zero-pads messages that
# are not whole 16-byte vectors (OLMoE's [B, 1, 2] fp32 q/k-norm sums went to NCCL before). OLMoE, every TP2 plan
# checked against one GPU (fp32, odd batch 3 so the sums are 24 bytes), then bs 1 timed with the per-path call counts.
# Usage (device tool, repo root): bash scripts/gpu/session7_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R
timeout 200 torchrun --standalone --nproc-per-node 2 scripts/bench_parallel.py --model olmoe --out $R --designs \
  --allreduce nccl symm --check-batch 3 --bs 1 --phases check time --output-len 64 > $R/olmoe.log 2>&1
echo "rc $?"
grep -E "^(# check|plan|1 GPU|TP2)" $R/olmoe.log
python3 -c "import json; [print(r['plan'], r['batch'], r.get('allreduce_calls')) for r in json.load(open('$R/olmoe.json'))['time']]"
