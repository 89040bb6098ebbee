#!/usr/bin/env bash
# Session 30, call 3 on nvidia-h200 (~4 min): call 2 again with the copies read in one load (no exchange each)
# (call 2: each copy read by an atomic exchange, ~0.5 µs apiece in series, made more copies slower), and a wider
# GEMV tile (fewer programs): every variant in the graphed bs-1 step.
# Usage (device tool, repo root): bash scripts/gpu/session30_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
timeout 200 python3 -m pytest -q -p no:cacheprovider -rf tests/test_o_route.py > $R/pytest_o_route.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_o_route.txt; grep -E "^FAILED" $R/pytest_o_route.txt | head
F=settings.fold_router="'on'"; K=minimoe.kernels.o_route
W='{"BLOCK_N":16,"BLOCK_K":256,"num_warps":4,"num_stages":3}'
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe; do
  [ $SECONDS -lt 400 ] && { timeout $((520 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant r1:$F --variant r8:$F,$K.REPLICAS=8 \
    --variant r32:$F,$K.REPLICAS=32 --variant r32w:$F,$K.REPLICAS=32,$K.CONFIG="$W" \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?"; grep -v "^#" $R/step_$m.txt | tail -6; }
done
[ $SECONDS -lt 500 ] && { timeout 70 python3 -c "
import sys, runpy, minimoe.kernels.o_route as o
o.REPLICAS = 32
sys.argv = ['profile_step.py', '--model', 'olmoe', '--bs', '1', '--steps', '5', '--pdl', 'off', '--fold-router', 'on',
            '--json', '$R/prof_olmoe_bs1_fold_r32v_nopdl.json']
runpy.run_path('scripts/profile_step.py', run_name='__main__')" > $R/prof_olmoe_bs1_fold_r32v_nopdl.txt 2>&1;
  echo "--- profile rc $?"; grep -A12 "one layer" $R/prof_olmoe_bs1_fold_r32v_nopdl.txt; }
tar czf $OUT/r.tgz -C $OUT r
