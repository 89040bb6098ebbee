#!/usr/bin/env bash
# Session 14, call 6 on nvidia-h200 (~4 min, the session's last device minutes): Mixtral int4 tables re-tuned on the
# byte tiles (the committed table was tuned on the word path). One machine: the graphed int4 step at bs 16 / 64 with
# the old table, then scripts/tune_fused_moe_quant.py --write (int4, 8-64 tokens), then the step with the new table.
# Usage (device tool, repo root): bash scripts/gpu/session14_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
P="--quant int4 --models mixtral --batches 16 64 --rounds 3 --steps 20"
timeout 100 python3 scripts/step_probe.py $P --variant oldtable > $R/step_old.txt 2>&1
grep -v "^#" $R/step_old.txt | tail -2
timeout 120 python3 scripts/tune_fused_moe_quant.py --formats int4 --presets mixtral --buckets 8 16 32 64 \
  --workers 12 --write --out $R/tune > $R/tune.txt 2>&1
echo "--- tune rc $?"; grep -E "^# (best|[0-9]+ rows)" $R/tune.txt | cut -c1-150
timeout 100 python3 scripts/step_probe.py $P --variant newtable > $R/step_new.txt 2>&1
grep -v "^#" $R/step_new.txt | tail -2
tar czf $OUT/r.tgz -C $OUT r
