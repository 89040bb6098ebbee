#!/usr/bin/env bash
# Session 31, call 1 on nvidia-h200 (~9 min): `--fold-attn-norm` (kernels/norm_gemv.py: the attention's residual add +
# RMSNorm inside the q/k/v GEMV, 1 / rms applied in the epilogue) -- its tests on the GPU, then the graphed bs-1 step
# with the fold on vs off (and GEMV tiles inside it) on OLMoE and Qwen3-30B-A3B (q/k norms: the q/k/v GEMV is its own
# launch), and on Qwen1.5-MoE / Mixtral against --fuse-rope (whose launch the fold cannot share yet).
# Usage (device tool, repo root): bash scripts/gpu/session31_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/run_info.txt 2>&1
timeout 150 python3 -m pytest -q tests/test_norm_gemv.py > $R/pytest_norm_gemv.txt 2>&1; echo "--- pytest rc $?"
tail -3 $R/pytest_norm_gemv.txt
F=settings.fold_attn_norm="'on'"; K=minimoe.kernels.norm_gemv
T1='{"BLOCK_N":8,"BLOCK_K":512,"num_warps":4,"num_stages":3}'
T2='{"BLOCK_N":4,"BLOCK_K":1024,"num_warps":2,"num_stages":3}'
T3='{"BLOCK_N":16,"BLOCK_K":256,"num_warps":4,"num_stages":3}'
for m in olmoe qwen3; do
  [ $SECONDS -lt 330 ] && { timeout $((560 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant an:$F \
    --variant an_t8:$F,$K.CONFIG="$T1" --variant an_t4w2:$F,$K.CONFIG="$T2" --variant an_t16:$F,$K.CONFIG="$T3" \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -6; }
done
for m in qwen1.5-moe mixtral; do
  [ $SECONDS -lt 450 ] && { timeout $((580 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant norope:settings.fuse_rope="'off'" \
    --variant norope_an:settings.fuse_rope="'off'",$F \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -5; }
done
tar czf $OUT/r.tgz -C $OUT r
