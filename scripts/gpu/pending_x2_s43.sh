#!/usr/bin/env bash
# What the forty-third session left for the next nvidia-h200-x2 call (~7 min; no two-GPU machine was lent to it):
#  1. `--fold-attn-norm on` under --tp 2 checked on the GPUs (the attention's residual add + RMSNorm inside each rank's
#     q/k/v GEMV; before the forty-third session a plan's hooks kept it off), fp32, tiny Mixtral (--fuse-rope off, else
#     rope's GEMV owns that launch) and Qwen3-MoE cards, against one process without the fold: the same greedy tokens;
#  2. issue 15's last open target with today's code: Mixtral-8x7B bs 1 TP2 <= 4.0 ms a decode step (4.356 ms in the
#     eleventh session with --pdl on), one GPU beside it, 128 / 128, --allreduce symm, --pdl on, twice;
#  3. the fold's speed under TP: Qwen3-30B-A3B bs 1 TP2, --fold-attn-norm auto (off under a plan) / on, alternating;
#     Mixtral bs 1 TP2 with the norm also folded into --fuse-rope's q/k/v GEMV (`norm_fusion.WITH_ROPE`, through
#     scripts/bench_knob.py, --fold-attn-norm on) against part 2's default, alternating.
# Usage (device tool, kind nvidia-h200-x2, repo root): bash scripts/gpu/pending_x2_s43.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
# 1
for card in mixtral-tiny qwen3-moe-tiny; do
  G="generate --model $card --prompt-ids 3,1,4,1,5 --max-new-tokens 12 --dtype fp32 --fuse-rope off"
  CUDA_VISIBLE_DEVICES=0 timeout 60 python3 -m minimoe $G --fold-attn-norm off --json $R/gen_${card}_one.json \
    > $R/gen_${card}_one.txt 2>&1
  timeout 90 torchrun --standalone --nproc-per-node 2 -m minimoe $G --tp 2 --pdl on --fold-attn-norm on \
    --json $R/gen_${card}_tp2.json > $R/gen_${card}_tp2.txt 2>&1
  python3 - "$R/gen_${card}_one.json" "$R/gen_${card}_tp2.json" <<'PY'
import json, sys
try:
    a, b = (json.load(open(f))["new_ids"] for f in sys.argv[1:])
    print(f"1 fold check {sys.argv[1].split('gen_')[1][:-9]}: tokens", "EQUAL" if a == b else f"DIFFER {a} {b}")
except (OSError, ValueError, KeyError) as e:
    print("1 fold check: no result", e)
PY
done
tar czf $OUT/r.tgz -C $OUT r
# 2
C="--fused --bs 1 --input-len 128 --output-len 128 --warmup 1 --iters 3"
CUDA_VISIBLE_DEVICES=0 timeout 100 python3 bench.py --model mixtral $C --json $R/mixtral_one.json > $R/mixtral_one.txt 2>&1
echo "2 mixtral one GPU rc $?: $(grep 'minimoe bs' $R/mixtral_one.txt)"
for i in 1 2; do
  timeout 110 torchrun --standalone --nproc-per-node 2 bench.py --model mixtral $C --tp 2 --allreduce symm --pdl on \
    --json $R/mixtral_tp2_$i.json > $R/mixtral_tp2_$i.txt 2>&1
  echo "2 mixtral tp2 rc $?: $(grep 'minimoe bs' $R/mixtral_tp2_$i.txt)"
done
tar czf $OUT/r.tgz -C $OUT r
# 3
i=0
for v in auto on; do
  i=$((i + 1))
  timeout 90 torchrun --standalone --nproc-per-node 2 bench.py --model qwen3 $C --tp 2 --allreduce symm --pdl on \
    --fold-attn-norm $v --json $R/qwen3_tp2_${v}_$i.json > $R/qwen3_tp2_${v}_$i.txt 2>&1
  echo "3 qwen3 tp2 fold-attn-norm $v rc $?: $(grep 'minimoe bs' $R/qwen3_tp2_${v}_$i.txt)"
  tar czf $OUT/r.tgz -C $OUT r
done
for i in 1 2; do
  timeout 110 torchrun --standalone --nproc-per-node 2 scripts/bench_knob.py "minimoe.norm_fusion.WITH_ROPE=True" -- \
    --model mixtral $C --tp 2 --allreduce symm --pdl on --fold-attn-norm on --json $R/mixtral_tp2_rope_norm_$i.json \
    > $R/mixtral_tp2_rope_norm_$i.txt 2>&1
  echo "3 mixtral tp2 rope+norm fold rc $?: $(grep 'minimoe bs' $R/mixtral_tp2_rope_norm_$i.txt)"
  timeout 110 torchrun --standalone --nproc-per-node 2 bench.py --model mixtral $C --tp 2 --allreduce symm --pdl on \
    --json $R/mixtral_tp2_base_$i.json > $R/mixtral_tp2_base_$i.txt 2>&1
  echo "3 mixtral tp2 default rc $?: $(grep 'minimoe bs' $R/mixtral_tp2_base_$i.txt)"
  tar czf $OUT/r.tgz -C $OUT r
done
