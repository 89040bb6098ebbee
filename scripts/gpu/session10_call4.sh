#!/usr/bin/env bash
# Session 10, call 4 on nvidia-h200 (~3 min): call 3 measured DeepSeek-V2-Lite bs 1 slower with head_gemv (416.5
# tok/s) than with cuBLAS's bmm (call 2: 425.6). scripts/mla_absorb_probe.py times the graphed step with bmm and
# with the kernel at several tiles, one model, variants interleaved.
# Usage (device tool, repo root): bash scripts/gpu/session10_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
timeout 400 python3 scripts/mla_absorb_probe.py --rounds 3 --steps 40 --json $R/mla_absorb_probe.json > $R/mla_absorb_probe.txt 2>&1
echo "--- rc $?"; grep -v Warn $R/mla_absorb_probe.txt | tail -9
tar czf $OUT/r.tgz -C $OUT r
