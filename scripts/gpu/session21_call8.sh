#!/usr/bin/env bash
# s21 call 8 (the budget's last minutes): issue 12's OLMoE bs-64 fp8 / bf16 ratio with the final code, in one run.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
W="--model olmoe --fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 64"
for q in none fp8; do
  timeout 60 python3 bench.py $W --quant $q --json $R/bench_olmoe64_$q.json > $R/bench_olmoe64_$q.txt 2>&1
  echo "bench $q: $(grep -h 'minimoe bs' $R/bench_olmoe64_$q.txt)"
done
