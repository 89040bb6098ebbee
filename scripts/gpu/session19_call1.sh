#!/usr/bin/env bash
# Nineteenth session, call 1 (~4 min; written by the eighteenth session as pending_h200.sh):
#  1. Mixtral-8x7B int8 bs 16 / 64, 128 / 128, beside bf16: int8's prefill now stays in-kernel below
#     moe_dequant.DEQUANT_MIN_ROWS (768 routed rows an expert): bs 16 TTFT should return to ~200 ms (216 with the
#     dequant path, eighteenth session call 4), bs 64 keep the dequant path (~0.51 s);
#  2. the narrow experts' bf16 decode tiles at batch 1 inside the graphed step (small_configs.SMALL_TILES, key None:
#     every model's experts): the eighteenth session's profile put Qwen3-30B-A3B's GEMM1 at ~61% and GEMM2 at ~47% of
#     their bytes' time in the step, and issue 16's bs-1 targets need both near 80%; the sweeps of one layer alone
#     (fifth and eighth sessions) are not the step's context; and GEMM2 launched early with PDL (GEMM2_EARLY).
# Usage (device tool, repo root): bash scripts/gpu/session19_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
W="--model mixtral --fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py $W --bs 16 --json $R/mixtral16_none.json > $R/mixtral16_none.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral16_none.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
timeout 120 python3 bench.py $W --bs 16 64 --quant int8 --ceilings $R/ceil.json --json $R/mixtral_int8.json \
  > $R/mixtral_int8.txt 2>&1
for f in $R/mixtral*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
S=minimoe.kernels.small_configs.SMALL_TILES
tile() { echo "{None: $1}"; }
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe; do     # one probe a model: a timeout loses only that model
  [ $SECONDS -gt 520 ] && { echo "$m: skipped (time)"; continue; }
  timeout 110 python3 scripts/step_probe.py --models $m --batches 1 \
    --variant base \
    --variant "g2_4x1024:$S=$(tile "{'down': {'BLOCK_N': 4, 'BLOCK_K': 1024}}")" \
    --variant "g2_8x256_s4:$S=$(tile "{'down': {'BLOCK_N': 8, 'BLOCK_K': 256, 'num_stages': 4}}")" \
    --variant "g2_16x512_w8:$S=$(tile "{'down': {'BLOCK_N': 16, 'BLOCK_K': 512, 'num_warps': 8}}")" \
    --variant "g2_s4:$S=$(tile "{'down': {'num_stages': 4}}")" \
    --variant "g1_s2:$S=$(tile "{'num_stages': 2}")" \
    --variant "g1_8x512_s2:$S=$(tile "{'BLOCK_N': 8, 'BLOCK_K': 512, 'num_stages': 2}")" \
    --variant "g1_2x2048:$S=$(tile "{'BLOCK_N': 2, 'BLOCK_K': 2048}")" \
    --variant "g2_early:minimoe.kernels.fused_moe_small.GEMM2_EARLY=True" \
    --rounds 2 --steps 40 --json $R/step_tiles_$m.json > $R/step_tiles_$m.txt 2>&1
  echo "--- probe $m rc $?"; grep -v "^#" $R/step_tiles_$m.txt | tail -9
done
tar czf $OUT/r.tgz -C $OUT r
