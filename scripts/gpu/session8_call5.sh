#!/usr/bin/env bash
# Session 8, call 5 on nvidia-h200-x2 (~6 min): the final code of the session against the seventh session's
# (baseline_s7.tgz, carried), one after the other on the same machine:
#  1. bench.py at batch 1 (128 / 128, one GPU) for OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite (call 4's down tile reverted);
#  2. torchrun bench.py Mixtral-8x7B --tp 2 --bs 1 (128 / 128, default --allreduce: symm on one node), base then new.
# Usage (device tool, repo root, carry baseline_s7.tgz): bash scripts/gpu/session8_call5.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/base && tar xzf baseline_s7.tgz -C /tmp/base
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 128"
(cd /tmp/base && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/base timeout 90 python3 bench.py --model olmoe $C --json $R/olmoe_ceil.json > $R/olmoe_ceil.txt 2>&1)
python3 -c "import json;c=json.load(open('$R/olmoe_ceil.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
run() {  # label dir model extra...
  local label=$1 dir=$2 m=$3; shift 3
  (cd $dir && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=$dir timeout 100 python3 bench.py --model $m $C --ceilings $R/ceil.json "$@" \
     > $R/${m}_$label.txt 2>&1)
  echo "$m $label rc $?: $(grep 'minimoe bs' $R/${m}_$label.txt)"
}
run base /tmp/base olmoe
run new $ROOT olmoe
tp() {  # label dir
  (cd $2 && PYTHONPATH=$2 timeout 110 torchrun --standalone --nproc-per-node 2 bench.py --model mixtral $C --tp 2 \
     --ceilings $R/ceil.json > $R/mixtral_tp2_$1.txt 2>&1)
  echo "mixtral tp2 $1 rc $?: $(grep -o 'allreduce=[a-z]*' $R/mixtral_tp2_$1.txt | head -1) $(grep 'minimoe bs' $R/mixtral_tp2_$1.txt)"
}
tp base /tmp/base
tp new $ROOT
for m in qwen3 deepseek-v2-lite; do
  run base /tmp/base $m
  run new $ROOT $m
done
cd $OUT && tar czf r.tgz r && rm -rf r
