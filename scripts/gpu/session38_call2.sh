#!/usr/bin/env bash
# Session 38, call 2: upper bounds on OLMoE bs 64's router top-k and alignment launches (scripts/launch_bound.py),
# and the bs-64 profile at the bench's mean cache length (192 entries: 128 in, 128 out).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 240 python3 scripts/step_probe.py --models olmoe --batches 64 --steps 40 --rounds 3 \
  --install scripts.launch_bound:install --variant base \
  --variant "notopk:scripts.launch_bound.DROP=('topk',)" --variant "noalign:scripts.launch_bound.DROP=('align',)" \
  --variant "noboth:scripts.launch_bound.DROP=('topk','align')" --json $R/bound.json > $R/bound.txt 2>&1
echo "--- bound rc $? t=$SECONDS"; grep -v Warn $R/bound.txt | tail -8
timeout 120 python3 scripts/profile_step.py --model olmoe --bs 64 --input-len 192 --steps 20 --json $R/prof192.json \
  > $R/prof192.txt 2>&1
echo "--- profile rc $? t=$SECONDS"; sed -n '/decode:/,$p' $R/prof192.txt | head -36
tar czf $OUT/r.tgz -C $OUT r
