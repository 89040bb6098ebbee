#!/usr/bin/env bash
# What the eleventh session left for the next nvidia-h200-x2 call (~10 min; it had no device time to run them):
#  1. PDL under TP2, checked and timed: parallel.sh's check phase (plans vs a PDL-off one-GPU oracle, fp32, graphed
#     tokens too) and Mixtral TP2 bs 1 / 64 with --pdl on (decides `--pdl auto` under a plan);
#  2. the eighth session's code (cb4c214, carry baseline_s8.tgz) beside today's, Mixtral TP2 bs 1, --pdl off: the
#     0.8% drift of the off step between sessions (docs/parallelism.md);
#  3. quantized weights under a plan on GPUs: Mixtral --quant int4 at bs 1 / 64, one GPU vs --tp 2 vs --ep 2;
#  4. the GPU tests of GPTQ / AWQ checkpoints (tests/test_quant_gpu.py -k int4_checkpoint).
# Make the baseline first, here: git archive --format=tar.gz -o baseline_s8.tgz cb4c214 minimoe bench.py \
#     $(git ls-tree --name-only cb4c214 models/ | grep json)
# Usage (device tool, kind nvidia-h200-x2, repo root, carry baseline_s8.tgz): bash scripts/gpu/pending_x2.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
C="--fused --warmup 1 --iters 2 --input-len 128 --output-len 64 --ceilings docs/results/2026-11-30-s8/call5_x2/ceil.json"
line() { grep -h 'minimoe bs' "$1" | head -2 | tr '\n' ' '; }
# 1
MODELS=mixtral BS="1 64" DESIGNS="" ALLREDUCE=symm PDL=on OUT_LEN=64 timeout 300 bash scripts/gpu/parallel.sh $R/pdl_tp2
echo "1 pdl under tp2 rc $?: $(grep -E '^# check|^TP2|^1 GPU' $R/pdl_tp2/summary.txt | tr '\n' ' ')"
# 2
if [ -f baseline_s8.tgz ]; then
  mkdir -p /tmp/base && tar xzf baseline_s8.tgz -C /tmp/base
  for who in base new; do
    dir=$([ $who = base ] && echo /tmp/base || echo $ROOT)
    (cd $dir && PYTHONPATH=$dir timeout 120 torchrun --standalone --nproc-per-node 2 bench.py --model mixtral $C \
       --bs 1 --tp 2 $([ $who = new ] && echo --pdl off) > $R/tp2_bs1_$who.txt 2>&1)
    echo "2 mixtral tp2 bs1 $who rc $?: $(line $R/tp2_bs1_$who.txt)"
  done
fi
# 3
for plan in "" "--tp 2" "--ep 2"; do
  tag=$(echo "1gpu $plan" | tr -d ' -' )
  if [ -z "$plan" ]; then
    CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench.py --model mixtral $C --bs 1 64 --quant int4 > $R/int4_$tag.txt 2>&1
  else
    timeout 150 torchrun --standalone --nproc-per-node 2 bench.py --model mixtral $C --bs 1 64 --quant int4 $plan \
      > $R/int4_$tag.txt 2>&1
  fi
  echo "3 mixtral int4 $tag rc $?: $(line $R/int4_$tag.txt)"
done
# 4
CUDA_VISIBLE_DEVICES=0 timeout 240 python3 -m pytest -q tests/test_quant_gpu.py -k int4_checkpoint > $R/pytest_int4.txt 2>&1
echo "4 gpu tests rc $?: $(tail -1 $R/pytest_int4.txt)"
cd $OUT && tar czf r.tgz r && rm -rf r
