#!/usr/bin/env bash
# Session 31, call 2 on nvidia-h200 (~9 min): bench.py bs 1, 128 / 128, the code before this session's step changes
# (commit a99eccf, extracted from .base_s31.tar, carried) against this tree, interleaved on one machine: the rope rows
# no longer gathered (two launches a step), positions in one add (three launches -> one), the LM head writing float32
# itself (one copy launch); and `--fold-attn-norm on` (call 1: -0.8 to -1.0% a step on OLMoE / Qwen3-30B-A3B).
# Usage (device tool, repo root, carry .base_s31.tar): bash scripts/gpu/session31_call2.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/run_info.txt 2>&1
B=/tmp/base; rm -rf $B; mkdir -p $B && tar xf .base_s31.tar -C $B && ln -s $PWD/models $B/models
NEW=$PWD
A="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
run() {  # tag tree model extra...
  local tag=$1 tree=$2 m=$3; shift 3
  (cd $tree && PYTHONPATH=$tree timeout 120 python3 bench.py --model $m $A --json $R/bench_${m}_$tag.json "$@" \
     > $R/bench_${m}_$tag.txt 2>&1); echo "--- $m $tag rc $? t=$SECONDS"
  grep -E "^ *(bs|config)|tok/s" $R/bench_${m}_$tag.txt | head -0
  python3 - $R/bench_${m}_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run base $B olmoe
run new $NEW olmoe
run newan $NEW olmoe --fold-attn-norm on
run base2 $B olmoe
run newan2 $NEW olmoe --fold-attn-norm on
[ $SECONDS -lt 300 ] && { run base $B qwen3; run new $NEW qwen3; run newan $NEW qwen3 --fold-attn-norm on; }
[ $SECONDS -lt 420 ] && { run base $B deepseek-v2-lite; run new $NEW deepseek-v2-lite; }
[ $SECONDS -lt 470 ] && { run base $B qwen1.5-moe; run new $NEW qwen1.5-moe; }
tar czf $OUT/r.tgz -C $OUT r
