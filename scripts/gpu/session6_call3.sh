#!/usr/bin/env bash
# Session 6, call 3 on nvidia-h200 (~2 min): scripts/pair_tiles.py again, now with WIDE tiles (several scale groups a
# step, scales per word) and the dense decode layer (D x D, x plain or packed; the 2-D GEMV beside it).
# Usage (device tool, repo root): bash scripts/gpu/session6_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 500 python3 scripts/pair_tiles.py --out $R/tiles > $R/tiles.log 2>&1
echo "tiles exit $?" >> $R/tiles.log
tar czf $OUT/results.tgz -C $OUT r
sed -n '/^# best tile/,$p' $R/tiles.log
grep -E "ERROR|FAIL" $R/tiles.log | head -5
grep -E "dense" $R/tiles.log | grep -E "mixtral|<-" | head -40
