#!/usr/bin/env bash
# Session 29, call 1 on nvidia-h200 (~8 min):
#  1. the changed kernels' test files left by the twenty-eighth session (was pending_h200.sh);
#  2. PDL-off profiles of today's code where issue 16's gaps are: OLMoE bs 64 and bs 1, Qwen3-30B-A3B bs 1 (the last
#     OLMoE bs-64 profile is the twentieth session's, before ~10 sessions of small-kernel changes).
# Usage (device tool, repo root): bash scripts/gpu/session29_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 300 python3 -m pytest -q -p no:cacheprovider -rf tests/test_gate_splitk.py tests/test_moe_align.py \
  tests/test_pdl_knob.py > $R/pytest_split_files.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_split_files.txt; grep -E "^FAILED" $R/pytest_split_files.txt | head
for mb in olmoe:64 olmoe:1 qwen3:1; do
  m=${mb%%:*}; b=${mb##*:}
  [ $SECONDS -lt 540 ] && { timeout 70 python3 scripts/profile_step.py --model $m --bs $b --steps 5 --pdl off \
    --json $R/prof_${m}_bs${b}_nopdl.json > $R/prof_${m}_bs${b}_nopdl.txt 2>&1; echo "--- profile $m bs $b rc $?"; }
done
tar czf $OUT/r.tgz -C $OUT r
