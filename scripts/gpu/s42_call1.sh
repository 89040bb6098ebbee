#!/usr/bin/env bash
# Forty-second session, call 1: the GEMMs finding their expert's rows themselves (`fused_moe.INLINE_ROWS`, no
# alignment launch) and the top-k combine folded into GEMM2's epilogue (`fused_moe.FOLD_COMBINE`, no combine launch).
# Their GPU tests (real shapes, skewed routings, PDL + overlap, graphs); the graphed step with each and both ("auto")
# against the defaults ("off") on OLMoE bs 64 / 16; bench.py OLMoE bs 64 with both off / on / off / on.
# Ran at the forty-second session's commit ea3fe28 (docs/results/2026-12-05-s42/call1): both lost in the step and were
# removed after; that commit did not land (the session's hand-in was cut off), so the knobs are gone and this script is a
# record of what ran, not runnable. Usage then (device tool, repo root, nvidia-h200, ~4 min): bash scripts/gpu/s42_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 -m pytest -q -x tests/test_tuned_tables_gpu.py tests/test_fused_moe.py -k "inline or overlap or fold" \
  > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
tar czf $OUT/r.tgz -C $OUT r
M=minimoe.kernels.fused_moe
INL="inline:$M.INLINE_ROWS='auto'"; FOLD="fold:$M.FOLD_COMBINE='auto'"; BOTH="both:$M.INLINE_ROWS='auto',$M.FOLD_COMBINE='auto'"
timeout 200 python3 scripts/step_probe.py --models olmoe --batches 64 16 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "$INL" --variant "$FOLD" --variant "$BOTH" --json $R/probe_olmoe.json > $R/probe_olmoe.txt 2>&1
echo "--- probe olmoe rc $? t=$SECONDS"; grep -E "^olmoe" $R/probe_olmoe.txt
tar czf $OUT/r.tgz -C $OUT r
for v in off auto off auto; do
  timeout 60 python3 scripts/bench_knob.py "$M.INLINE_ROWS='$v'" "$M.FOLD_COMBINE='$v'" -- --model olmoe --fused --bs 64 \
    --input-len 128 --output-len 128 --warmup 1 --iters 3 --json $R/bench_olmoe64_$v.json > $R/bench_olmoe64_$v.txt 2>&1
  echo "--- bench olmoe64 $v rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_olmoe64_$v.txt
done
tar czf $OUT/r.tgz -C $OUT r
