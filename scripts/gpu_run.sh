#!/usr/bin/env bash
# What we run on the GPU machine (the `device` tool), phase by phase; every result lands in $OUT.
#   bash scripts/gpu_run.sh check tune layer olmoe      (any subset, in order)
# Each phase has its own time limit so one failure cannot eat the whole lease.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "=== $* ($(date +%T))"; }
for phase in "$@"; do
  case $phase in
    env) log env; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
         python3 -c "import torch, triton, transformers; print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__)" ;;
    check) log check
         timeout 240 python3 -m pytest -q -x tests/test_fused_moe.py tests/test_decode_attention.py tests/test_gpu.py 2>&1 | tail -25 ;;
    tune) log tune
         timeout 240 python3 scripts/tune_fused_moe.py --out minimoe/kernels/configs 2>&1 | tail -60
         tar cf "$OUT/configs.tar" minimoe/kernels/configs ;;
    layer) log layer
         timeout 200 python3 bench.py --layer --json "$OUT/layer.json" 2>&1 | grep -v '^{' ;;
    olmoe) log olmoe
         timeout 120 python3 bench.py --model olmoe --fused --bs 64 --profile --json "$OUT/olmoe_bs64.json" 2>&1 | grep -v '^{'
         timeout 60 python3 bench.py --model olmoe --fused --bs 64 --attn triton --json "$OUT/olmoe_bs64_triton.json" 2>&1 | grep -v '^{'
         timeout 60 python3 bench.py --model olmoe --fused --bs 1 --attn triton --profile --json "$OUT/olmoe_bs1.json" 2>&1 | grep -v '^{' ;;
    compare) log compare
         timeout 200 python3 bench.py --model olmoe --bs 64 --fused --compare transformers --compare-steps 32 --json "$OUT/olmoe_compare.json" 2>&1 | grep -v '^{' ;;
    *) echo "unknown phase $phase" ;;
  esac
done
