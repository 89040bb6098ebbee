#!/usr/bin/env bash
# Forty-first session, call 3: the GPU tests of the TMA table entries (tests/test_tuned_tables_gpu.py, OLMoE
# full size graphed == eager at bs 1-64); the b_tma tables (this session's change) against the old entries in the graphed step
# (scripts/gpu/moe_tma_check_s41.py: OLMoE bs 64 / 16 with three more TMA tiles, Qwen3-30B-A3B bs 64, Mixtral bs 16),
# with fused_moe.OVERLAP_GEMMS as a variant too; then bench.py OLMoE bs 64 new / overlap / new / overlap.
# Usage (device tool, repo root, nvidia-h200, ~9 min): bash scripts/gpu/s41_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 -m pytest -q tests/test_tuned_tables_gpu.py tests/test_fused_moe.py -k "overlap or tma or T64" \
  > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
timeout 120 python3 -m pytest -q "tests/test_gpu.py::test_olmoe_full_size_graphs_equal_eager" > $R/pytest2.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
for m in olmoe qwen3 mixtral; do
  BS=$([ $m = olmoe ] && echo "64 16" || ([ $m = qwen3 ] && echo 64 || echo 16))
  timeout 150 python3 scripts/gpu/moe_tma_check_s41.py $m --batches $BS --steps 40 --rounds 3 --json $R/chk_$m.json \
    > $R/chk_$m.txt 2>&1
  echo "--- check $m rc $? t=$SECONDS"; grep -v Warn $R/chk_$m.txt | grep -E "^(model|$m)"
  tar czf $OUT/r.tgz -C $OUT r
done
BA="--model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3"
OV="minimoe.kernels.fused_moe.OVERLAP_GEMMS='on'"     # call 3 ran =True, the knob's spelling then
O64="{64: {'BLOCK_M': 16, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'num_warps': 8, 'num_stages': 3}}"
for v in new overlap new2 overlap2; do
  case ${v%2} in
    old) K="minimoe.kernels.moe_configs.BUCKET_OVERRIDES=$O64";;
    overlap) K="$OV";;
    *) K="minimoe.kernels.moe_configs.BUCKET_OVERRIDES={}";;
  esac
  timeout 100 python3 scripts/bench_knob.py "$K" -- $BA --json $R/bench_olmoe64_$v.json > $R/bench_olmoe64_$v.txt 2>&1
  echo "--- bench $v rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_olmoe64_$v.txt
  tar czf $OUT/r.tgz -C $OUT r
done
