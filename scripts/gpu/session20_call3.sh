#!/usr/bin/env bash
# Twentieth session, call 3 (~3 min): the one-pass decode MoE again, with tiles of 2-8 K elements a load (call 2's
# [32, 512] x 2 spilled) and with W2 also read from a transposed copy (scripts/bench_onepass.py); if a tile on the
# engine's own W2 layout comes within 3% of the two-kernel layer, it goes into the graphed bs-1 step.
# Usage (device tool, repo root): bash scripts/gpu/session20_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 240 python3 scripts/bench_onepass.py --presets olmoe qwen3 dsv2lite --json $R/layer.json > $R/layer.txt 2>&1
echo "--- layer rc $?"; sed -n '/^preset/,$p' $R/layer.txt
for p in olmoe qwen3 dsv2lite; do
  python3 -c "
import json
rec=[r for r in json.load(open('$R/layer.json')) if r['preset']=='$p'][0]['results']
base=rec['two-kernel']['us']
for lay in ('onepass ', 'onepass T '):
    ok={k:v for k,v in rec.items() if k.startswith(lay) and (lay=='onepass T ' or not k.startswith('onepass T')) and v.get('us') and v['ok']}
    b=min(ok,key=lambda k:ok[k]['us'])
    print('$p', repr(lay), 'best', b, round(ok[b]['us'],1), 'us vs two-kernel', round(base,1), 'ratio', round(base/ok[b]['us'],3))
"
done > $R/best.txt 2>&1; cat $R/best.txt
O=minimoe.kernels.fused_moe_onepass.ONEPASS
for m in qwen3 olmoe; do
  best=$(python3 -c "
import json
rec=[r for r in json.load(open('$R/layer.json')) if r['preset']=='$m'][0]['results']
ok={k:v for k,v in rec.items() if k.startswith('onepass ') and not k.startswith('onepass T') and v.get('us') and v['ok']}
b=min(ok,key=lambda k:ok[k]['us'])
if ok[b]['us'] <= 1.03*rec['two-kernel']['us']:
    print('{None:{'+','.join(\"'%s':%d\"%(k,v) for k,v in ok[b]['config']['onepass'].items())+'}}')")
  [ -z "$best" ] && { echo "probe $m: no tile within 3% of the two-kernel layer"; continue; }
  timeout 60 python3 scripts/step_probe.py --models $m --batches 1 --variant base "--variant=op_best:$O=$best" \
    --rounds 3 --steps 40 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- probe bs 1 $m rc $? (op_best $best)"; grep -v "^#" $R/step_$m.txt | tail -2
done
tar czf $OUT/r.tgz -C $OUT r
