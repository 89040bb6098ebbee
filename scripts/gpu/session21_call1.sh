#!/usr/bin/env bash
# For the next nvidia-h200 call (~5 min), left by the twentieth session (docs/perf_notes.md, its open leads): the
# batch-1 norm + router fold (kernels/gate_splitk.py, 6.5 µs a Qwen3-30B-A3B layer with PDL off for 0.5 MB of gate)
# inside the graphed bs-1 step of OLMoE and Qwen3-30B-A3B: the L2 prefetch of each program's gate rows before gdc_wait
# (PREFETCH_GATE), fewer splits (WAVE_PROGRAMS: the programs default_splits fills), other gate tiles (BLOCK_E,
# BLOCK_D); then the GPU tests of gate_splitk (the knobs' GPU test has not run yet). A variant that wins by > 1% goes
# to bench.py next. wave264 gives OLMoE its default split count (16): there it is an A/A control.
# Usage (device tool, repo root): bash scripts/gpu/pending_h200.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
G=minimoe.kernels.gate_splitk
for m in olmoe qwen3; do
  timeout 150 python3 scripts/step_probe.py --models $m --batches 1 --variant base \
    "--variant=prefetch:$G.PREFETCH_GATE=True" "--variant=wave64:$G.WAVE_PROGRAMS=64" \
    "--variant=wave32:$G.WAVE_PROGRAMS=32" "--variant=wave264:$G.WAVE_PROGRAMS=264" \
    "--variant=be16:$G.BLOCK_E=16" "--variant=bd256:$G.BLOCK_D=256" "--variant=bd64:$G.BLOCK_D=64" \
    --rounds 2 --steps 40 --json $R/step_router_$m.json > $R/step_router_$m.txt 2>&1
  echo "--- probe bs 1 $m rc $?"; grep -v "^#" $R/step_router_$m.txt | tail -8
done
timeout 100 python3 -m pytest -q tests/test_gate_splitk.py tests/test_norm_route.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
