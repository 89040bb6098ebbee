#!/usr/bin/env bash
# Forty-fourth session, call 4 (~4 min): the read-bandwidth probe with UNROLL tiles in flight (kernels/stream_read.py),
# each grid point's GB/s beside torch.sum and the copy; then bench.py Mixtral bs 16, whose decode read ~103% of
# the old probe's ceiling in call 2 (flagged as a measurement bug); then issue 16's fused MoE on shapes no table lists.
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s44_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 60 python3 - > $R/probe.txt 2>&1 <<'PY'
import json, torch
from minimoe.bench import roofline
from minimoe.kernels.stream_read import stream_sum
big = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
sms = torch.cuda.get_device_properties(0).multi_processor_count
rows = []
for rnd in range(2):
    for per_sm in (1, 2, 4, 8, 16):
        for unroll in (1, 2, 4, 8):
            programs, chunk = sms * per_sm, 4096 * unroll
            x = big[: big.numel() // (programs * chunk) * programs * chunk]
            stream_sum(x, programs, unroll=unroll)
            ms = roofline.median_ms(lambda: stream_sum(x, programs, unroll=unroll), 20, big.device)
            rows.append({"round": rnd, "per_sm": per_sm, "unroll": unroll, "GBps": x.numel() * 2 / ms / 1e6})
            print(f"round {rnd} per_sm {per_sm:2d} unroll {unroll}: {rows[-1]['GBps']:7.1f} GB/s", flush=True)
del big
c = roofline.measure_ceilings("cuda")
print("measure_ceilings:", json.dumps(c))
print(json.dumps({"grid": rows, "ceilings": c}))
PY
echo "--- probe rc $? t=$SECONDS"; grep unroll $R/probe.txt | sort -t: -k2 -n | tail -6; grep measure_ceilings $R/probe.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 75 python3 bench.py --model mixtral --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 16 \
  --json $R/bench_mixtral.json > $R/bench_mixtral.txt 2>&1
echo "--- mixtral rc $? t=$SECONDS"; grep -E "ceilings|WARNING|minimoe bs" $R/bench_mixtral.txt
tar czf $OUT/r.tgz -C $OUT r
# issue 16's unseen-shapes check with today's code (last run 2026-11-30, docs/results/2026-11-30-s4/call1/untuned.txt)
timeout 150 python3 scripts/untuned_shapes.py --json $R/untuned.json > $R/untuned.txt 2>&1
echo "--- untuned rc $? t=$SECONDS"; tail -3 $R/untuned.txt
tar czf $OUT/r.tgz -C $OUT r
