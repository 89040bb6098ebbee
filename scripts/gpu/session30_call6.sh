#!/usr/bin/env bash
# Session 30, call 6 on nvidia-h200 (~4 min): GEMV tiles inside `--fold-router`'s kernel (o_route.CONFIG; the unfused
# o projection's dense_config tile [8, 512] x 4 warps today) for DeepSeek-V2-Lite and OLMoE at bs 1: the graphed step
# (step_probe), then bench.py at bs 1 with each tile (the knob set before bench's main).
# Usage (device tool, repo root): bash scripts/gpu/session30_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
K=minimoe.kernels.o_route
T1='{"BLOCK_N":4,"BLOCK_K":1024,"num_warps":4,"num_stages":3}'
T2='{"BLOCK_N":4,"BLOCK_K":1024,"num_warps":2,"num_stages":3}'
T3='{"BLOCK_N":16,"BLOCK_K":256,"num_warps":4,"num_stages":3}'
for m in deepseek-v2-lite olmoe; do
  [ $SECONDS -lt 200 ] && { timeout $((300 - SECONDS)) python3 scripts/step_probe.py --models $m --batches 1 \
    --input-len 128 --steps 60 --rounds 3 --variant base --variant t4w4:$K.CONFIG="$T1" --variant t4w2:$K.CONFIG="$T2" \
    --variant t16w4:$K.CONFIG="$T3" --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $?";
    grep -v "^#" $R/step_$m.txt | tail -4; }
done
for v in base:None t4w4:$T1; do
  n=${v%%:*}; c=${v#*:}
  [ $SECONDS -lt 290 ] && { timeout $((320 - SECONDS)) python3 -c "
import sys, runpy, minimoe.kernels.o_route as o
o.CONFIG = $c
sys.argv = ['bench.py', '--model', 'deepseek-v2-lite', '--fused', '--warmup', '1', '--iters', '3', '--input-len', '128',
            '--output-len', '128', '--bs', '1', '--json', '$R/bench_dsv2_$n.json']
runpy.run_path('bench.py', run_name='__main__')" > $R/bench_dsv2_$n.txt 2>&1; echo "--- bench dsv2 $n rc $?";
    grep -A1 "out tok/s" $R/bench_dsv2_$n.txt | tail -1 | cut -c1-120; }
done
tar czf $OUT/r.tgz -C $OUT r
