#!/usr/bin/env bash
# Twenty-second session, call 1: the probes the twenty-first session left in pending_h200.sh (dense GEMV tiles at bs 1, bs-64 norm warps and align programs, unfolded router tiles, GPU tests). The
# batch-1 dense GEMVs' tiles inside the graphed step. q/k/v and o at T = 1 run `kernels/dense_gemv.py` with the tile
# `dense_config` picks from a one-kernel sweep (fifth session); the twentieth session's profile put them at ~60% of
# their bytes in Qwen3-30B-A3B (q/k/v 7.5 µs for 21 MB, o 6.8 for 17 MB, PDL off). dense_gemv.TILES overrides one
# (N, D) at a time. Shapes: OLMoE q/k/v (6144, 2048) [16, 256] by the rule, o (2048, 2048) [8, 512]; Qwen3 q/k/v
# (5120, 2048) [8, 512], o (2048, 4096) [4, 1024]. A tile that wins by > 0.5% goes into dense_gemv.TILES (per GPU
# name, as small_configs.STEP_TILES), then bench.py bs 1.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
P=minimoe.kernels.dense_gemv.TILES
v() { echo "--variant=$1:$P={$2}"; }
probe() {  # model, then variants
  local m=$1; shift
  timeout 140 python3 scripts/step_probe.py --models $m --batches 1 --variant base "$@" --rounds 3 --steps 40 \
    --json $R/step_dense_$m.json > $R/step_dense_$m.txt 2>&1
  echo "--- probe bs 1 $m rc $?"; grep -v "^#" $R/step_dense_$m.txt | tail -9
}
probe olmoe "$(v qkv8x512 "(6144,2048):{'BLOCK_N':8,'BLOCK_K':512}")" \
  "$(v qkv4x1024 "(6144,2048):{'BLOCK_N':4,'BLOCK_K':1024}")" \
  "$(v qkv16w2 "(6144,2048):{'BLOCK_N':16,'BLOCK_K':256,'num_warps':2}")" \
  "$(v qkv32w8 "(6144,2048):{'BLOCK_N':32,'BLOCK_K':256,'num_warps':8}")" \
  "$(v o16x256 "(2048,2048):{'BLOCK_N':16,'BLOCK_K':256}")" \
  "$(v o4x1024 "(2048,2048):{'BLOCK_N':4,'BLOCK_K':1024}")" \
  "$(v o8w2 "(2048,2048):{'BLOCK_N':8,'BLOCK_K':512,'num_warps':2}")" \
  "$(v o4x512w1 "(2048,2048):{'BLOCK_N':4,'BLOCK_K':512,'num_warps':1}")"
probe qwen3 "$(v qkv16x256 "(5120,2048):{'BLOCK_N':16,'BLOCK_K':256}")" \
  "$(v qkv4x1024 "(5120,2048):{'BLOCK_N':4,'BLOCK_K':1024}")" \
  "$(v qkv8w2 "(5120,2048):{'BLOCK_N':8,'BLOCK_K':512,'num_warps':2}")" \
  "$(v qkv4x512w1 "(5120,2048):{'BLOCK_N':4,'BLOCK_K':512,'num_warps':1}")" \
  "$(v o8x512 "(2048,4096):{'BLOCK_N':8,'BLOCK_K':512}")" \
  "$(v o2x2048 "(2048,4096):{'BLOCK_N':2,'BLOCK_K':2048}")" \
  "$(v o4w2 "(2048,4096):{'BLOCK_N':4,'BLOCK_K':1024,'num_warps':2}")" \
  "$(v o2x1024w1 "(2048,4096):{'BLOCK_N':2,'BLOCK_K':1024,'num_warps':1}")"
# bs 64 (issue 16: OLMoE 14,253 / 15,000, DeepSeek-V2-Lite 6,417 / 6,800): other small kernels' grids, as the combine's
# was (s21 call 4): the RMSNorm's warps a row (8 for D = 2048 today) and the alignment's programs (64, "a guess").
N=minimoe.kernels.rmsnorm.ROW_WARPS; A=minimoe.kernels.moe_align.PARALLEL_PROGRAMS
for m in olmoe deepseek-v2-lite; do
  timeout 110 python3 scripts/step_probe.py --models $m --batches 64 --variant base "--variant=norm_w4:$N=4" \
    "--variant=norm_w2:$N=2" "--variant=norm_w16:$N=16" "--variant=align32:$A=32" "--variant=align128:$A=128" \
    --rounds 2 --steps 20 --json $R/step_small64_$m.json > $R/step_small64_$m.txt 2>&1
  echo "--- probe bs 64 $m rc $?"; grep -v "^#" $R/step_small64_$m.txt | tail -6
done
# the unfolded split-K router (bs 2-4, 2-byte gates) on the fold's 16 x 256 tiles, which s21 gave the fold only
G=minimoe.kernels.gate_splitk
timeout 90 python3 scripts/step_probe.py --models qwen3 olmoe --batches 2 4 --variant base \
  "--variant=other16x256:$G.BLOCK_E_OTHER=16,$G.BLOCK_D_OTHER=256" --rounds 2 --steps 40 \
  --json $R/step_unfolded.json > $R/step_unfolded.txt 2>&1
echo "--- probe bs 2 4 rc $?"; grep -v "^#" $R/step_unfolded.txt | tail -8
# every GPU test: the code after s21's call 4 (combine tile, gate_tiles, PREFETCH_GATE_FP32 test) has not run on a GPU
[ $SECONDS -lt 330 ] && timeout 240 python3 -m pytest -q -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
