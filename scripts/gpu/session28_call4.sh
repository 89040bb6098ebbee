#!/usr/bin/env bash
# Session 28, call 4 on nvidia-h200 (~5 min): the decode attention's 3 K/V stages on grids that fill the SMs
# (`decode_attention.BIG_GRID_STAGES`, new default; 2 before) on the models calls 2-3 did not cover: Mixtral bs 64
# (G = 4; its bs 16 grid is small and unchanged), Qwen1.5-MoE and OLMoE bs 16 / 64 (MHA). Then bench.py OLMoE bs 64
# with the new default. (BIG_GRID_STAGES was then one number; it became a table by (G, Dk) after this call, so the `s2`
# variant below no longer applies to today's code.)
# Usage (device tool, repo root): bash scripts/gpu/session28_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
S=minimoe.kernels.decode_attention.BIG_GRID_STAGES
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_decode_attention.py > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^FAILED" $R/pytest.txt | head
timeout 200 python3 scripts/step_probe.py --models mixtral --batches 64 --input-len 128 --steps 120 --rounds 3 \
  --variant base --variant s2:$S=2 --json $R/step_mixtral.json > $R/step_mixtral.txt 2>&1
echo "--- mixtral rc $?"; grep -v "^#" $R/step_mixtral.txt | tail -3
timeout 150 python3 scripts/step_probe.py --models qwen1.5-moe olmoe --batches 64 16 --input-len 128 --steps 120 --rounds 3 \
  --variant base --variant s2:$S=2 --json $R/step_mha.json > $R/step_mha.txt 2>&1
echo "--- mha rc $?"; grep -v "^#" $R/step_mha.txt | tail -9
[ $SECONDS -lt 520 ] && { timeout 70 python3 bench.py --model olmoe --fused --warmup 1 --iters 3 --input-len 128 \
  --output-len 128 --bs 64 --json $R/bench_olmoe_64.json > $R/bench_olmoe_64.txt 2>&1; echo "--- bench rc $?"; \
  grep -A1 "config  TTFT" $R/bench_olmoe_64.txt | tail -1; }
tar czf $OUT/r.tgz -C $OUT r
