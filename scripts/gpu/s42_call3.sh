#!/usr/bin/env bash
# Forty-second session, call 3 (~7 min): the o projection split over K at decode batches, its float32 partials summed
# by the residual add + RMSNorm (o_splitk.py, kernels/rmsnorm_parts.py; call 2's microbenchmark: OLMoE's o 6.48 ->
# 5.42 µs at 4 slices, Qwen3-30B-A3B's 10.28 -> 7.51 at 2). Its GPU tests; the graphed step with 4 and 2 slices
# ("auto": 16-64 tokens) against the default (off) on OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite, Qwen1.5-MoE, Mixtral;
# bench.py OLMoE bs 64 off / auto / off / auto.
# Usage (device tool, repo root, nvidia-h200; the later probes only while time is left): bash scripts/gpu/s42_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -q -x tests/test_o_splitk.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
tar czf $OUT/r.tgz -C $OUT r
S4="s4:minimoe.o_splitk.MODE='auto',minimoe.o_splitk.SPLITS=4"; S2="s2:minimoe.o_splitk.MODE='auto',minimoe.o_splitk.SPLITS=2"
probe() {  # name, timeout, models/batches...
  local name=$1 t=$2; shift 2
  timeout $t python3 scripts/step_probe.py "$@" --input-len 128 --steps 40 --rounds 3 --variant base --variant "$S4" \
    --variant "$S2" --json $R/probe_$name.json > $R/probe_$name.txt 2>&1
  echo "--- probe $name rc $? t=$SECONDS"; grep -E "^[a-z].* (base|s4|s2) " $R/probe_$name.txt
  tar czf $OUT/r.tgz -C $OUT r
}
probe olmoe 100 --models olmoe --batches 64 16
for v in off auto off auto; do
  timeout 60 python3 scripts/bench_knob.py "minimoe.o_splitk.MODE='$v'" -- --model olmoe --fused --bs 64 \
    --input-len 128 --output-len 128 --warmup 1 --iters 3 --json $R/bench_olmoe64_$v.json > $R/bench_olmoe64_$v.txt 2>&1
  echo "--- bench olmoe64 $v rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_olmoe64_$v.txt
done
tar czf $OUT/r.tgz -C $OUT r
probe qwen3 100 --models qwen3 --batches 64 16
[ $SECONDS -lt 420 ] && probe shared 110 --models deepseek-v2-lite qwen1.5-moe --batches 64
[ $SECONDS -lt 480 ] && probe mixtral 100 --models mixtral --batches 64
