#!/usr/bin/env bash
# Forty-first session, call 4: the defaults as landed (b_tma decode tables, fused_moe.OVERLAP_GEMMS "auto"). The step
# with the overlap's auto rule against "off" (OLMoE bs 64 / 16; Mixtral is left to the auto rule's CPU test: no
# device time for its 47B build); the overlap's GPU tests; bench.py OLMoE bs 1 / 16 / 64 and Qwen3-30B-A3B bs 64, then OLMoE bs 64 with it off.
# Usage (device tool, repo root, nvidia-h200, ~3.5 min): bash scripts/gpu/s41_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 60 python3 -m pytest -q tests/test_fused_moe.py -k overlap > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -1 $R/pytest.txt
OFF="off:minimoe.kernels.fused_moe.OVERLAP_GEMMS='off'"
timeout 100 python3 scripts/step_probe.py --models olmoe --batches 64 16 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "$OFF" --json $R/probe_olmoe.json > $R/probe_olmoe.txt 2>&1
echo "--- probe olmoe rc $? t=$SECONDS"; grep -E "^olmoe" $R/probe_olmoe.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 90 python3 bench.py --model olmoe --fused --bs 1 16 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
  --json $R/bench_olmoe.json > $R/bench_olmoe.txt 2>&1
echo "--- bench olmoe rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_olmoe.txt
timeout 60 python3 scripts/bench_knob.py "minimoe.kernels.fused_moe.OVERLAP_GEMMS='off'" -- --model olmoe --fused --bs 64 \
  --input-len 128 --output-len 128 --warmup 1 --iters 3 --json $R/bench_olmoe64_off.json > $R/bench_olmoe64_off.txt 2>&1
echo "--- bench olmoe off rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_olmoe64_off.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 80 python3 bench.py --model qwen3 --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
  --json $R/bench_qwen3.json > $R/bench_qwen3.txt 2>&1
echo "--- bench qwen3 rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_qwen3.txt
tar czf $OUT/r.tgz -C $OUT r
