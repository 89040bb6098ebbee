#!/usr/bin/env bash
# Session 31, call 3 on nvidia-h200 (~5 min): `--fold-attn-norm` on by default and in the first layer too (no residual
# to add); bench.py bs 1 (128 / 128) OLMoE twice and Qwen3-30B-A3B against the code before the session (a99eccf,
# .base_s31.tar, carried), and a PDL-off profile of OLMoE's bs-1 step: what launches are left outside the layers.
# Usage (device tool, repo root, carry .base_s31.tar): bash scripts/gpu/session31_call3.sh
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
  python3 - $R/bench_${m}_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run base $B olmoe
run new $NEW olmoe
run new2 $NEW olmoe
run base $B qwen3
run new $NEW qwen3
PYTHONPATH=$NEW timeout 150 python3 scripts/profile_step.py --model olmoe --bs 1 --steps 5 --pdl off \
  --json $R/prof_olmoe_bs1_nopdl.json > $R/prof_olmoe_bs1_nopdl.txt 2>&1; echo "--- profile rc $?"
grep -A40 "bs1 decode" $R/prof_olmoe_bs1_nopdl.txt | head -60
tar czf $OUT/r.tgz -C $OUT r
