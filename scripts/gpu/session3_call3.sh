#!/usr/bin/env bash
# Session 3, H200 call 3 (the last ~5 min of the lease): issue 12's quantized kernels checked on real shapes and
# timed beside bf16 (trimmed: no bitsandbytes wheel carried, so no nf4 / bnb-int8; no int8 whole-model row), then
# issue 13's pruned shapes timed against the unpruned model (OLMoE only, the three targets' rows).
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
SKIP="graphs mixtral_bs1_nf4 mixtral_bs1_int8" timeout 230 bash scripts/gpu/quant.sh $R/quant > $R/quant_console.log 2>&1
timeout 60 python3 scripts/bench_prune.py --out $R/prune --models olmoe --bs 64 1 --inter 0.5 --intra 0.25 --skip 0.3333 \
  --output-len 64 --budget-s 45 --ceilings $R/quant/ceilings.json > $R/prune.log 2>&1
tar czf $OUT/results.tgz -C $OUT r
grep -E "PASS|FAIL|MET|MISS|x bf16|rc=" $R/quant_console.log | head -40; tail -25 $R/prune.log
