#!/usr/bin/env bash
# Pending (written in the thirty-seventh session, not run): the next measurements after the PDL mark
# (graphs.PrefillGraph.run, kernels/pdl.py pdl_mark; docs/perf_notes.md "Open leads ... after the thirty-seventh").
# (1) Issue 13's bs-1 ratios with the mark (intra 25%, skipping a third; the unpruned step is now faster too).
# (2) generate()'s loop (decode(own=True): a copy in and a clone out around each replay) after the mark: does it run
#     in the fast state? (the thirty-sixth session's token recording, a clone after each replay, left later Generators
#     slow, which the mark's rule does not explain). (3) The mark's position again in the probe (after / before / off).
# (4) Every Triton kernel's shared-memory carveout at 100% with the mark (Qwen3-30B-A3B -0.59% without it, call 5).
# (5) OLMoE bs 64's per-kernel profile with the mark (issue 16's last target: 14,347.8 of 15,000 out tok/s).
# Usage (device tool, repo root, nvidia-h200, ~7 min): bash scripts/gpu/pending_s38.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 scripts/bench_prune.py --models olmoe --bs 1 --inter 0.25 --intra 0.25 --skip 0.3333 \
  --output-len 64 --budget-s 150 --out $R/prune > $R/prune.txt 2>&1
echo "--- prune rc $? t=$SECONDS"; grep -E "MET|MISSED|^ *(none|inter|intra|skip)" $R/prune.txt | head -12
for m in olmoe qwen3; do
  timeout 120 python3 scripts/prefill_state_probe.py --model $m --variants none,used,used-markbefore,used-nomark,used-carve100,none-carve100 \
    --json $R/pstate_$m.json 2>&1 | grep -v Warn > $R/pstate_$m.txt
  grep "^#" $R/pstate_$m.txt; echo "--- $m t=$SECONDS"
  timeout 90 python3 scripts/prefill_state_probe.py --model $m --own --variants none,used,used-nomark \
    --json $R/pstate_${m}_own.json 2>&1 | grep -v Warn > $R/pstate_${m}_own.txt
  grep "^#" $R/pstate_${m}_own.txt; echo "--- $m own t=$SECONDS"
done
timeout 90 python3 scripts/profile_step.py --model olmoe --bs 64 --steps 20 --json $R/prof_olmoe_bs64.json \
  > $R/prof_olmoe_bs64.txt 2>&1
echo "--- profile rc $? t=$SECONDS"; head -40 $R/prof_olmoe_bs64.txt
tar czf $OUT/r.tgz -C $OUT r
