#!/usr/bin/env bash
# Session 26, call 2 on nvidia-h200 (~9 min): absorbed MLA's two batched GEMMs (cuBLAS, stream order, ~3.3-3.5 µs
# + ~0.45 µs idle each a layer at bs 1) folded into neighbouring launches:
#   absorb: q_lat = q_nope W_uk as extra programs of the prologue kernel (kernels/mla_rope.py ABSORB_MAX_T);
#   uv:     W_uv inside the split attention's merge (kernels/mla_merge_uv.py, mla.MERGE_UV_MAX_B).
#  1. tests on the GPU (bf16): the new kernels, MLA, decode attention, DeepSeek graphed == eager;
#  2. the graphed decode step of DeepSeek-V2-Lite at bs 1 / 4 / 16 / 64: off (base) / uv / absorb / both, tiles;
#  3. bench.py DeepSeek-V2-Lite bs 1: off and both (same call).
# Usage (device tool, repo root): bash scripts/gpu/session26_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_mla_absorb.py tests/test_mla_rope.py \
  tests/test_decode_attention.py tests/test_gpu.py -k "absorb or merge_uv or mla or deepseek or split" > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
M=minimoe.mla.MERGE_UV_MAX_B; A=minimoe.kernels.mla_rope.ABSORB_MAX_T
timeout 200 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 1 4 16 64 --variant base \
  --variant uv:$M=64 --variant absorb:$A=4 --variant both:$M=64,$A=4 --rounds 3 --steps 30 \
  --json $R/step_mla.json > $R/step_mla.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_mla.txt | tail -17
K=minimoe.kernels
[ $SECONDS -lt 330 ] && { timeout 110 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 1 \
  --variant both:$M=64,$A=4 --variant uvn8:$M=64,$A=4,$K.mla_merge_uv.BLOCK_N=8 \
  --variant uvn32:$M=64,$A=4,$K.mla_merge_uv.BLOCK_N=32 --variant c32:$M=64,$A=4,$K.mla_rope.ABSORB_BLOCK_C=32 \
  --variant c128:$M=64,$A=4,$K.mla_rope.ABSORB_BLOCK_C=128 --rounds 3 --steps 30 \
  --json $R/step_tiles.json > $R/step_tiles.txt 2>&1; echo "--- tiles rc $?"; grep -v "^#" $R/step_tiles.txt | tail -6; }
B="--model deepseek-v2-lite --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for v in off both; do
  [ $SECONDS -lt 500 ] && { timeout 90 python3 -c "
import runpy, sys
import minimoe.mla as m, minimoe.kernels.mla_rope as r
if '$v' == 'both':
    m.MERGE_UV_MAX_B, r.ABSORB_MAX_T = 64, 4
sys.argv = ['bench.py'] + '$B --json $R/bench_dsv2_1_$v.json'.split()
runpy.run_path('bench.py', run_name='__main__')" > $R/bench_dsv2_1_$v.txt 2>&1; echo "--- bench $v rc $?"; \
    grep -A1 "config  TTFT" $R/bench_dsv2_1_$v.txt | tail -1; }
done
tar czf $OUT/r.tgz -C $OUT r
