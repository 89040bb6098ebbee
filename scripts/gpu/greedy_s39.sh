#!/usr/bin/env bash
# Thirty-ninth session, call 3: the greedy tail at bs 16-64. OLMoE bs 64's step spends ~8 µs on the logits' float32
# copy and ~12 + 12 µs in the argmax's two passes (4 chunks a row: 256 programs of ~12 serial 1,024-element tiles).
# Variants: GREEDY_RAW_LOGITS (the argmax on the head's bf16 logits, no copy), greedy.TARGET_PROGRAMS 1,024 (16
# chunks a row), both. (1) step_probe, OLMoE bs 64 / 16 / 1, Qwen3-30B-A3B bs 64 (a 152k vocabulary); (2) the greedy
# GPU tests; (3) bench.py OLMoE bs 64 base / both.
# Usage (device tool, repo root, nvidia-h200, ~5 min): bash scripts/gpu/greedy_s39.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
V="--variant base --variant raw:minimoe.generate.GREEDY_RAW_LOGITS=True
   --variant tp1024:minimoe.kernels.greedy.TARGET_PROGRAMS=1024
   --variant both:minimoe.generate.GREEDY_RAW_LOGITS=True,minimoe.kernels.greedy.TARGET_PROGRAMS=1024"
timeout 150 python3 -m pytest -q tests/test_greedy.py tests/test_generate.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
timeout 200 python3 scripts/step_probe.py --models olmoe --batches 64 16 1 --input-len 128 --steps 60 --rounds 3 \
  $V --json $R/probe_olmoe.json > $R/probe_olmoe.txt 2>&1
echo "--- probe olmoe rc $? t=$SECONDS"; grep -v Warn $R/probe_olmoe.txt | tail -13
timeout 150 python3 scripts/step_probe.py --models qwen3 --batches 64 --input-len 128 --steps 40 --rounds 3 \
  $V --json $R/probe_qwen3.json > $R/probe_qwen3.txt 2>&1
echo "--- probe qwen3 rc $? t=$SECONDS"; grep -v Warn $R/probe_qwen3.txt | tail -5
BA="--model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3"
timeout 100 python3 scripts/bench_knob.py "minimoe.generate.GREEDY_RAW_LOGITS=False" -- $BA \
  --json $R/bench_olmoe64_base.json > $R/bench_olmoe64_base.txt 2>&1
echo "--- bench base rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_olmoe64_base.txt
timeout 100 python3 scripts/bench_knob.py "minimoe.generate.GREEDY_RAW_LOGITS=True" \
  "minimoe.kernels.greedy.TARGET_PROGRAMS=1024" -- $BA --json $R/bench_olmoe64_both.json > $R/bench_olmoe64_both.txt 2>&1
echo "--- bench both rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_olmoe64_both.txt
tar czf $OUT/r.tgz -C $OUT r
