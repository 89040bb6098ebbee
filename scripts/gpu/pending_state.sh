#!/usr/bin/env bash
# Pending (written in the thirty-sixth session, not run): the next measurements of the bs-1 step's two states
# (docs/results.md, "thirty-sixth session"). (1) Do the states merge with PDL off? alloc_probe with the prefill graph in
# odd rounds, PDL on and off. (2) Does any second graph alive beside the decode graph slow it (state_probe --during:
# a tiny add graph, a prefill graph on another Generator)? (3) The same question without a model
# (scripts/pdl_coexist_probe.py: a chain of tiny PDL kernels, a second graph held). (4) bench bs 1 with and without
# --eager-prefill.
# Usage (device tool, repo root, nvidia-h200, ~5 min): bash scripts/gpu/pending_state.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for m in olmoe qwen3; do
  for pdl in on off; do
    timeout 120 python3 scripts/alloc_probe.py --model $m --batch 1 --rounds 6 --prefill-graph alternate --pdl $pdl \
      --json $R/alloc_${m}_pdl$pdl.json 2>&1 | grep -v Warn | tee $R/alloc_${m}_pdl$pdl.txt | cut -c1-70
    echo "--- $m pdl $pdl t=$SECONDS"
  done
done
for act in none add-graph prefill-graph; do
  timeout 60 python3 scripts/state_probe.py --model olmoe --action $act --during --json $R/during_$act.json 2>&1 \
    | grep -v Warn | tee -a $R/during.txt
done
timeout 60 python3 scripts/pdl_coexist_probe.py --json $R/coexist.json 2>&1 | grep -v Warn | tee $R/coexist.txt
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
for X in "" "--eager-prefill"; do
  timeout 100 python3 bench.py --model qwen3 $C $X --json $R/bench_qwen3$X.json > $R/bench_qwen3$X.txt 2>&1
  grep -h 'minimoe bs' $R/bench_qwen3$X.txt | tr -s ' '
done
tar czf $OUT/r.tgz -C $OUT r
