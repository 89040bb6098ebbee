#!/usr/bin/env bash
# Session 33, call 3 on nvidia-h200 (~8 min): the q/k norm + rope + cache write inside the split decode-attention kernel
# (rope_attn_fusion.AUTO; kernels/decode_rope_attention.py, its WARPS knob 4 / 8): its GPU tests (and the rank top-k's
# with their ulp tolerance); the graphed decode step of Qwen3-30B-A3B and OLMoE at bs 1, 16 and 64; bench.py bs 1
# (128 / 128) Qwen3-30B-A3B: the session's start (d46ca1d, .base_s33.tar, carried), this tree's defaults (EARLY_TILE on),
# and with the fusion on (scripts/with_knobs.py).
# Usage (device tool, repo root, carry .base_s33.tar): bash scripts/gpu/session33_call3.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
ROOT=$PWD; B=/tmp/base; rm -rf $B; mkdir -p $B && tar xf .base_s33.tar -C $B && ln -s $PWD/models $B/models
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q tests/test_decode_rope_attention.py tests/test_rope_attn_fusion.py \
  tests/test_topk_rank.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
A=minimoe.rope_attn_fusion.AUTO; W=minimoe.kernels.decode_rope_attention.WARPS
probe() {  # tag model batches variants...
  local tag=$1 m=$2 b=$3; shift 3
  PYTHONPATH=$PWD timeout 170 python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 \
    --rounds 3 --variant base "$@" --variant base2 --json $R/step_$tag.json > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -9
}
probe qwen3_bs1 qwen3 1 --variant fused:$A=True --variant fused8:$A=True,$W=8
probe olmoe_bs1 olmoe 1 --variant fused:$A=True --variant fused8:$A=True,$W=8
probe qwen3_bs16 qwen3 "16 64" --variant fused:$A=True
probe olmoe_bs64 olmoe "16 64" --variant fused:$A=True
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
run fused $PWD qwen3 $A=True
run fused8 $PWD qwen3 $A=True $W=8
tar czf $OUT/r.tgz -C $OUT r
