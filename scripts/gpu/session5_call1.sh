#!/usr/bin/env bash
# Session 5, call 1 on nvidia-h200-x2 (~6 min): whole-round CUDA graphs for speculative decoding (issue 14).
#  GPU 0: bench_spec check (exactness: graphed rounds == eager == plain greedy at real shapes), then the sweep at
#         bs 1 / 16 / 64, G 4, A 0.8, both drafts' step times, with --ab-rounds: the same run with eager rounds
#         between per-step graphs (the code before this session) in the same process.
#  GPU 1: GPU tests of speculation; the trained models (real acceptance) with --ab-rounds; a kernel profile of the
#         Qwen3-0.6B draft's graphed decode step at bs 1 (where the draft's 1.4 ms goes).
# Usage (device tool, repo root): bash scripts/gpu/session5_call1.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 150 python3 scripts/bench_spec.py check --out $R/spec > $R/spec_check.log 2>&1; echo "rc=$?" >> $R/spec_check.log
  timeout 330 python3 scripts/bench_spec.py sweep --out $R/spec --batches 1 16 64 --gammas 4 --ab-rounds \
    > $R/spec_sweep.log 2>&1; echo "rc=$?" >> $R/spec_sweep.log
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_speculative.py -m gpu > $R/spec_tests.log 2>&1
  echo "rc=$?" >> $R/spec_tests.log
  timeout 200 python3 scripts/bench_spec.py trained --out $R/spec --gammas 1 2 4 8 --ab-rounds > $R/spec_trained.log 2>&1
  echo "rc=$?" >> $R/spec_trained.log
  timeout 100 python3 scripts/profile_step.py --model qwen3-0.6b --bs 1 --json $R/profile_draft_bs1.json \
    > $R/profile_draft_bs1.txt 2>&1
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
tail -n 3 $R/spec_tests.log; grep -h "rc=\|PASS\|FAIL\|equal" $R/spec_check.log | head -20
grep -h "run G\|T_T" $R/spec_sweep.log | head -30
grep -h "run G\|trained " $R/spec_trained.log | head -30
head -30 $R/profile_draft_bs1.txt
