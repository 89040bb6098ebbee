#!/usr/bin/env bash
# Session 37, call 8 on nvidia-h200 (~3 min): call 7 found bench.py no faster with graphs.PrefillGraph.run's PDL mark
# (launched before the output's clone), while call 6's probe healed the step with a PDL RMSNorm after it. The probe
# with the mark after the clone (now the default), before it, and off; bench.py bs 1 with the mark after / off, and
# with --eager-prefill (the fast state's reference).
# Usage (device tool, repo root): bash scripts/gpu/session37_call8.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V=none,used,used-nomark,used-markbefore,used+norm-pdl
for m in olmoe qwen3; do
  timeout 200 python3 scripts/prefill_state_probe.py --model $m --variants $V --json $R/pstate_$m.json 2>&1 | grep -v Warn > $R/pstate_$m.txt
  grep "^#" $R/pstate_$m.txt; echo "--- $m t=$SECONDS"
done
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for m in qwen3 olmoe; do
  for k in after off eager; do
    case $k in after) A="minimoe.graphs.PDL_MARK='after' --";; off) A="minimoe.graphs.PDL_MARK='' --";; eager) A="minimoe.graphs.PDL_MARK='after' -- --eager-prefill";; esac
    timeout 100 python3 scripts/bench_knob.py $A --model $m $C --json $R/bench_${m}_$k.json > $R/bench_${m}_$k.txt 2>&1
    echo "--- $m mark $k rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}_$k.txt | tr -s ' '
  done
done
tar czf $OUT/r.tgz -C $OUT r
