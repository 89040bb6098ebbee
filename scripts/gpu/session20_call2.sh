#!/usr/bin/env bash
# Twentieth session, call 2 (~7 min): the one-pass decode MoE (kernels/fused_moe_onepass.py, GEMM1 + GEMM2 in one
# launch split over I, then a fixed-order reduce) against the two-kernel path:
#  1. one layer at T = 1 on five expert shapes, 12 tiles (scripts/bench_onepass.py);
#  2. inside the graphed bs-1 step (scripts/step_probe.py) on Qwen3-30B-A3B and OLMoE: the default tile, BLOCK_I 16
#     and 64, and the layer's fastest tile;
#  3. the new and touched GPU tests.
# Usage (device tool, repo root): bash scripts/gpu/session20_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 scripts/bench_onepass.py --json $R/layer.json > $R/layer.txt 2>&1
echo "--- layer rc $?"; sed -n '/^preset/,$p' $R/layer.txt
O=minimoe.kernels.fused_moe_onepass.ONEPASS
for m in qwen3 olmoe; do
  [ $SECONDS -gt 330 ] && { echo "probe $m: skipped (time)"; continue; }
  best=$(python3 -c "
import json,sys
name={'qwen3':'qwen3','olmoe':'olmoe'}['$m']
try:
    rec=[r for r in json.load(open('$R/layer.json')) if r['preset']==name and r['T']==1][0]
    ok={k:v for k,v in rec['results'].items() if k!='two-kernel' and v.get('us') and v['ok']}
    t=ok[min(ok,key=lambda k:ok[k]['us'])]['config']['onepass']
    print('{None:{'+','.join(\"'%s':%d\"%(k,v) for k,v in t.items())+'}}')
except Exception:
    print('{None:{}}')")
  timeout 75 python3 scripts/step_probe.py --models $m --batches 1 --variant base \
    "--variant=op:$O={None:{}}" "--variant=op16:$O={None:{'BLOCK_I':16}}" "--variant=op64:$O={None:{'BLOCK_I':64}}" \
    "--variant=op_best:$O=$best" --rounds 3 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- probe bs 1 $m rc $? (op_best $best)"; grep -v "^#" $R/step_$m.txt | tail -5
done
timeout 100 python3 -m pytest -q -m gpu tests/test_fused_moe_onepass.py tests/test_fused_moe.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
