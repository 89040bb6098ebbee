#!/usr/bin/env bash
# Session 32, call 4 on nvidia-h200 (~6 min): two small kernels' loads in one L2 round trip, both on: the attention
# merge's partials as one [splits, Dv] tile (decode_attention_merge.TILE_ELEMS) and the router fold's gate tile loaded
# before its row reduction (gate_splitk.HOIST_TILE; Qwen3-30B-A3B); their GPU tests; the graphed bs-1 step of
# Qwen3-30B-A3B, OLMoE and Qwen1.5-MoE with each off; bench.py bs 1 (128 / 128) OLMoE and Qwen3-30B-A3B, the defaults
# against the session's start (587ff44, .base_s32.tar, carried) and against both knobs off (scripts/with_knobs.py).
# Usage (device tool, repo root, carry .base_s32.tar): bash scripts/gpu/session32_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
ROOT=$PWD; B=/tmp/base; rm -rf $B; mkdir -p $B && tar xf .base_s32.tar -C $B && ln -s $PWD/models $B/models
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q tests/test_decode_attention.py tests/test_gate_splitk.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
M=minimoe.kernels.decode_attention_merge.TILE_ELEMS; H=minimoe.kernels.gate_splitk.HOIST_TILE
probe() {  # model variants...
  local m=$1; shift
  PYTHONPATH=$PWD timeout 150 python3 scripts/step_probe.py --models $m --batches 1 --input-len 128 --steps 60 \
    --rounds 3 --variant base "$@" --variant base2 --json $R/step_$m.json > $R/step_$m.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"; grep -v "^#" $R/step_$m.txt | tail -6
}
probe qwen3 --variant tile_off:$M=0 --variant hoist_off:$H=False --variant both_off:$M=0,$H=False
probe olmoe --variant tile_off:$M=0
probe qwen1.5-moe --variant tile_off:$M=0
AR="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
run() {  # tag tree model [knobs...]
  local tag=$1 tree=$2 m=$3; shift 3
  (cd $tree && PYTHONPATH=$tree timeout 150 python3 $ROOT/scripts/with_knobs.py "$@" -- bench.py --model $m $AR \
     --json $R/bench_${m}_bs1_$tag.json > $R/bench_${m}_bs1_$tag.txt 2>&1)
  echo "--- $m bs1 $tag rc $? t=$SECONDS"
  python3 - $R/bench_${m}_bs1_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run new $PWD qwen3
run base $B qwen3
run off $PWD qwen3 $M=0 $H=False
run new2 $PWD qwen3
run new $PWD olmoe
run base $B olmoe
run off $PWD olmoe $M=0
run new2 $PWD olmoe
tar czf $OUT/r.tgz -C $OUT r
