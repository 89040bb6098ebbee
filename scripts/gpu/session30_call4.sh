#!/usr/bin/env bash
# Session 30, call 4 on nvidia-h200 (~5 min): `--fold-router`'s copy count (o_route.REPLICAS 8 / 16 / 32) on OLMoE,
# DeepSeek-V2-Lite, Qwen1.5-MoE and Mixtral-8x7B, and GEMV tiles for Qwen3-30B-A3B's fold (call 3: +5.3% at 8 copies on
# its 1,024 one-warp programs), each in the graphed bs-1 step.
# Usage (device tool, repo root): bash scripts/gpu/session30_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
F=settings.fold_router="'on'"; K=minimoe.kernels.o_route
for m in olmoe deepseek-v2-lite qwen1.5-moe mixtral; do
  [ $SECONDS -lt 380 ] && { timeout $((520 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant r8:$F,$K.REPLICAS=8 \
    --variant r16:$F,$K.REPLICAS=16 --variant r32:$F,$K.REPLICAS=32 \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -5; }
done
T1='{"BLOCK_N":4,"BLOCK_K":1024,"num_warps":2,"num_stages":3}'
T2='{"BLOCK_N":8,"BLOCK_K":512,"num_warps":4,"num_stages":3}'
T3='{"BLOCK_N":4,"BLOCK_K":1024,"num_warps":4,"num_stages":3}'
[ $SECONDS -lt 450 ] && { timeout $((560 - SECONDS)) python3 scripts/step_probe.py --models qwen3 --batches 1 \
  --input-len 128 --steps 60 --rounds 3 --variant base --variant r8:$F,$K.REPLICAS=8 \
  --variant r8t4w2:$F,$K.REPLICAS=8,$K.CONFIG="$T1" --variant r8t8w4:$F,$K.REPLICAS=8,$K.CONFIG="$T2" \
  --variant r8t4w4:$F,$K.REPLICAS=8,$K.CONFIG="$T3" \
  --json $R/step_qwen3.json > $R/step_qwen3.txt 2>&1; echo "--- qwen3 rc $?"; grep -v "^#" $R/step_qwen3.txt | tail -6; }
tar czf $OUT/r.tgz -C $OUT r
