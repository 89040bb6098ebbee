#!/usr/bin/env bash
# Forty-fourth session, call 4 reduced to fit the device time left (~3 min): issue 16's fused MoE on shapes no table
# lists (scripts/untuned_shapes.py; last run 2026-11-30), then the read-bandwidth probe's grid (s44_call4.sh's first
# part). Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s44_call4b.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 130 python3 scripts/untuned_shapes.py --json $R/untuned.json > $R/untuned.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -3 $R/untuned.txt
tar czf $OUT/r.tgz -C $OUT r
sed -n "/<<'PY'/,/^PY$/p" scripts/gpu/s44_call4.sh | sed '1d;$d' > $R/probe.py
timeout 50 python3 $R/probe.py > $R/probe.txt 2>&1
echo "--- probe rc $? t=$SECONDS"; grep unroll $R/probe.txt | sort -t: -k2 -n | tail -4; grep measure_ceilings $R/probe.txt
tar czf $OUT/r.tgz -C $OUT r
