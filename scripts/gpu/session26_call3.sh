#!/usr/bin/env bash
# Session 26, call 3 on nvidia-h200 (~9 min): absorbed MLA, after call 2 (absorb in the prologue -4.82% at bs 1, now
# the default up to 4 tokens; W_uv in the merge +0.70% at bs 1, -1.06% at bs 4, slower at 16 / 64):
#  1. GPU tests of the new kernels (bf16) and DeepSeek graphed == eager with the new default;
#  2. the graphed decode step, DeepSeek-V2-Lite bs 1 / 4: base / W_uk tile before the PDL wait / W_uv in the merge
#     with its tile right after the wait (uv1) or before it (uv2), 8 columns a program (uv2n8);
#     bs 16: absorption inside the prologue up to 16 tokens;
#  3. bench.py DeepSeek-V2-Lite bs 1 (base and best guess) and Mixtral bs 1 (its 6.6 ms target, not re-run since s23);
#  4. a PDL-off profile of DeepSeek-V2-Lite bs 1 (its 128-token prefill: 10.6 ms against ~7.4 of weight bytes).
# Usage (device tool, repo root): bash scripts/gpu/session26_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_mla_absorb.py tests/test_gpu.py -k "absorb or merge_uv or deepseek or mla" \
  > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
K=minimoe.kernels; M=minimoe.mla.MERGE_UV_MAX_B
timeout 200 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 1 4 --variant base \
  --variant early:$K.mla_rope.ABSORB_W_EARLY=True --variant uv1:$M=4,$K.mla_merge_uv.W_EARLY=1 \
  --variant uv2:$M=4,$K.mla_merge_uv.W_EARLY=2 --variant uv2n8:$M=4,$K.mla_merge_uv.W_EARLY=2,$K.mla_merge_uv.BLOCK_N=8 \
  --variant all:$M=4,$K.mla_merge_uv.W_EARLY=2,$K.mla_rope.ABSORB_W_EARLY=True --rounds 3 --steps 30 \
  --json $R/step_mla.json > $R/step_mla.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_mla.txt | tail -13
[ $SECONDS -lt 300 ] && { timeout 100 python3 scripts/step_probe.py --models deepseek-v2-lite --batches 16 --variant base \
  --variant absorb16:$K.mla_rope.ABSORB_MAX_T=16 --rounds 3 --steps 30 --json $R/step_16.json > $R/step_16.txt 2>&1; \
  echo "--- probe 16 rc $?"; grep -v "^#" $R/step_16.txt | tail -3; }
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for v in base all; do
  [ $SECONDS -lt 420 ] && { timeout 90 python3 -c "
import runpy, sys
import minimoe.mla as m, minimoe.kernels.mla_rope as r, minimoe.kernels.mla_merge_uv as u
if '$v' == 'all':
    m.MERGE_UV_MAX_B, u.W_EARLY, r.ABSORB_W_EARLY = 4, 2, True
sys.argv = ['bench.py'] + '--model deepseek-v2-lite $B --json $R/bench_dsv2_1_$v.json'.split()
runpy.run_path('bench.py', run_name='__main__')" > $R/bench_dsv2_1_$v.txt 2>&1; echo "--- bench $v rc $?"; \
    grep -A1 "config  TTFT" $R/bench_dsv2_1_$v.txt | tail -1; }
done
[ $SECONDS -lt 420 ] && { timeout 70 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 1 --steps 5 --pdl off \
  --json $R/prof_dsv2_bs1_nopdl.json > $R/prof_dsv2_bs1_nopdl.txt 2>&1; echo "--- profile rc $?"; }
[ $SECONDS -lt 470 ] && { timeout 120 python3 bench.py --model mixtral $B --json $R/bench_mixtral_1.json \
  > $R/bench_mixtral_1.txt 2>&1; echo "--- bench mixtral rc $?"; grep -A1 "config  TTFT" $R/bench_mixtral_1.txt | tail -1; }
tar czf $OUT/r.tgz -C $OUT r
