#!/usr/bin/env bash
# Session 32, call 3 on nvidia-h200 (~7 min): with the split rope kernel on (Q_PROGRAMS 8) and the embedding gather on,
# knobs in the graphed bs-1 step of Qwen3-30B-A3B and OLMoE: more rope programs / fewer warps, the norm-folded q/k/v
# GEMV's tile (norm_gemv.CONFIG), and the split attention's K tiles a split at small grids (2 or 4: fewer splits, or
# one split and no merge launch); then bench.py bs 1 (128 / 128) on both against the session's start (587ff44,
# .base_s32.tar, carried).
# Usage (device tool, repo root, carry .base_s32.tar): bash scripts/gpu/session32_call3.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
B=/tmp/base; rm -rf $B; mkdir -p $B && tar xf .base_s32.tar -C $B && ln -s $PWD/models $B/models
P=minimoe.kernels.rope; N=minimoe.kernels.norm_gemv.CONFIG; A=minimoe.kernels.decode_attention.SMALL_GRID_MIN_TILES
V=(--variant base --variant "ng4x1024:$N={'BLOCK_N':4,'BLOCK_K':1024}"
   --variant "ng2x1024w1:$N={'BLOCK_N':2,'BLOCK_K':1024,'num_warps':1}"
   --variant "ng4x512w2:$N={'BLOCK_N':4,'BLOCK_K':512,'num_warps':2}"
   --variant "ng8x512:$N={'BLOCK_N':8,'BLOCK_K':512}" --variant "ng16x256:$N={'BLOCK_N':16,'BLOCK_K':256}"
   --variant attn2:$A=2 --variant attn4:$A=4)
PYTHONPATH=$PWD timeout 240 python3 scripts/step_probe.py --models qwen3 --batches 1 --input-len 128 --steps 60 --rounds 3 \
  "${V[@]}" --variant q16:$P.Q_PROGRAMS=16 --variant q32:$P.Q_PROGRAMS=32 --variant w1:$P.SPLIT_WARPS=1 \
  --variant w2:$P.SPLIT_WARPS=2 --variant base2 --json $R/step_qwen3.json > $R/step_qwen3.txt 2>&1
echo "--- qwen3 rc $? t=$SECONDS"; grep -v "^#" $R/step_qwen3.txt | tail -14
PYTHONPATH=$PWD timeout 150 python3 scripts/step_probe.py --models olmoe --batches 1 --input-len 128 --steps 60 --rounds 3 \
  "${V[@]}" --variant w2:$P.SPLIT_WARPS=2 --variant base2 --json $R/step_olmoe.json > $R/step_olmoe.txt 2>&1
echo "--- olmoe rc $? t=$SECONDS"; grep -v "^#" $R/step_olmoe.txt | tail -10
AR="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
run() {  # tag tree model bs
  local tag=$1 tree=$2 m=$3 bs=$4
  (cd $tree && PYTHONPATH=$tree timeout 150 python3 bench.py --model $m $AR --bs $bs \
     --json $R/bench_${m}_bs${bs}_$tag.json > $R/bench_${m}_bs${bs}_$tag.txt 2>&1)
  echo "--- $m bs$bs $tag rc $? t=$SECONDS"
  python3 - $R/bench_${m}_bs${bs}_$tag.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); m = d["results"][0]["metrics"]
print(f"   out tok/s {m['output_tok_s']:.1f}  ITL {m['itl_median_ms']:.4f} ms  TTFT {m['ttft_ms']:.3f} ms")
PY
}
run new $PWD olmoe 1
run base $B olmoe 1
run new2 $PWD olmoe 1
run new $PWD qwen3 1
run base $B qwen3 1
tar czf $OUT/r.tgz -C $OUT r
