#!/usr/bin/env bash
# Session 32, call 1 on nvidia-h200 (~8 min): scripts/gpu/pending_h200_s32.sh (the greedy tail in one launch,
# kernels/greedy.py ONE_LAUNCH, and the embedding row read inside the first layer's norm fold, norm_fusion.EMBED:
# their GPU tests, then the graphed bs-1 step on OLMoE and Qwen3-30B-A3B, variants interleaved), then bench.py OLMoE
# bs 1 (128 / 128) under each variant, the module attributes set before bench.py runs (scripts/with_knobs.py).
# Usage (device tool, repo root): bash scripts/gpu/session32_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
git log -1 --format=%H > $R/git_head.txt 2>/dev/null
bash scripts/gpu/pending_h200_s32.sh
echo "--- probes done t=$SECONDS"
G=minimoe.kernels.greedy; E=minimoe.norm_fusion
A="--model olmoe --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
run() {  # tag knobs...
  local tag=$1; shift
  PYTHONPATH=$PWD timeout 120 python3 scripts/with_knobs.py "$@" -- bench.py $A --json $R/bench_olmoe_bs1_$tag.json \
    > $R/bench_olmoe_bs1_$tag.txt 2>&1
  echo "--- olmoe bs1 $tag rc $? t=$SECONDS"
  python3 - $R/bench_olmoe_bs1_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run base
run both $G.ONE_LAUNCH=True $E.EMBED=True
run one $G.ONE_LAUNCH=True
run emb $E.EMBED=True
run base2
run both2 $G.ONE_LAUNCH=True $E.EMBED=True
tar czf $OUT/r.tgz -C $OUT r
