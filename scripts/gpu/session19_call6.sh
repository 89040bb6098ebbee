#!/usr/bin/env bash
# Nineteenth session, call 6 (~3 min): issue 13's bs-1 ratios with the GEMM2 rule now 4 x 1024 / 2 warps at T = 1
# (small_configs.small_default_config; the 25%-intra-pruned OLMoE's I = 768 takes it as the unpruned I = 1024 does).
# Usage (device tool, repo root): bash scripts/gpu/session19_call6.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 170 python3 scripts/bench_prune.py --out $R/prune --models olmoe --bs 1 --inter --intra 0.25 --skip 0.3333 --iters 3 \
  --budget-s 140 > $R/prune.txt 2>&1
echo "--- prune rc $?"; grep -v Warn $R/prune.txt | tail -14
tar czf $OUT/r.tgz -C $OUT r
