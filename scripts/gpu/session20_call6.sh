#!/usr/bin/env bash
# Twentieth session, call 6 (~6 min): every GPU test on the session's final code, and the bs-1 step profile of
# Qwen3-30B-A3B with PDL off (each kernel's own duration: with PDL a kernel's time includes the wait of its
# early launch, so the nineteenth session's profiles summed to more than the step).
# Usage (device tool, repo root): bash scripts/gpu/session20_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
for m in qwen3; do
  timeout 50 python3 scripts/profile_step.py --model $m --bs 1 --steps 10 --fused --pdl off \
    --json $R/prof_${m}_nopdl.json > $R/prof_${m}_nopdl.txt 2>&1
  echo "--- profile $m rc $?"; grep -A3 "decode:" $R/prof_${m}_nopdl.txt | head -2
  grep -A14 "one layer in launch order" $R/prof_${m}_nopdl.txt | head -16
done
timeout 270 python3 -m pytest -q -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -4 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
