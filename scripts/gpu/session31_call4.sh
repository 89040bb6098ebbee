#!/usr/bin/env bash
# Session 31, call 4 on nvidia-h200 (~6 min): the step's glue launches, A/B'd in the graphed bs-1 step (step_probe
# knobs): the final norm inside the LM head's GEMV (norm_fusion.HEAD, on; its tile HEAD_CONFIG), the step's positions and
# lengths in one Triton launch (kv_cache.STEP_KERNEL, on); then bench.py OLMoE bs 1 (128 / 128) twice with the defaults
# and once with the code before the session (a99eccf, .base_s31.tar, carried).
# Usage (device tool, repo root, carry .base_s31.tar): bash scripts/gpu/session31_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/run_info.txt 2>/dev/null
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv >> $R/run_info.txt 2>&1
N=minimoe.norm_fusion; K=minimoe.kv_cache
T16='{"BLOCK_N":16,"BLOCK_K":256,"num_warps":4,"num_stages":3}'
T8='{"BLOCK_N":8,"BLOCK_K":512,"num_warps":4,"num_stages":3}'
for m in olmoe qwen3; do
  PYTHONPATH=$PWD timeout 200 python3 scripts/step_probe.py --models $m --batches 1 --input-len 128 --steps 60 \
    --rounds 3 --variant base --variant nohead:$N.HEAD=False --variant nostep:$K.STEP_KERNEL=False \
    --variant h16:$N.HEAD_CONFIG="$T16" --variant h8:$N.HEAD_CONFIG="$T8" \
    --json $R/step_$m.json > $R/step_$m.txt 2>&1; echo "--- $m rc $? t=$SECONDS"; grep -v "^#" $R/step_$m.txt | tail -6
done
B=/tmp/base; rm -rf $B; mkdir -p $B && tar xf .base_s31.tar -C $B && ln -s $PWD/models $B/models
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
[ $SECONDS -lt 420 ] && { run new $PWD olmoe; run base $B olmoe; run new2 $PWD olmoe; }
tar czf $OUT/r.tgz -C $OUT r
