#!/usr/bin/env bash
# Session 16, call 6 on nvidia-h200 (~4 min): GEMM2's flat loop steps (slot, chunk) instead of dividing a step;
# Mixtral int4 GEMM2 tiles with more words a thread (scripts/pair_tiles.py, chains 4, every tile checked against the
# loop oracle); the best Mixtral GEMM2 tile in the graphed bs-1 step against the table's 16 x 256 / 8 splits.
# Usage (device tool, repo root): bash scripts/gpu/session16_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 80 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_quant_gpu.py -k "pair_ptx" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt | cut -c1-300
timeout 100 python3 scripts/pair_tiles.py --shapes mixtral-8x7b --bits 4 --tokens 1 --chains 4 --out $R/t \
  > $R/pair_tiles.txt 2>&1
echo "--- tiles rc $?"; grep -A6 "^# best" $R/pair_tiles.txt
BEST=$(python3 - "$R/t/pair_tiles.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["gemm"] == "down" and r["status"] == "PASS"]
t = min(rows, key=lambda r: r["us"])["tile"]
print((t["BLOCK_N"], t["BLOCK_K"], t["num_warps"], t["num_stages"], False, bool(t["wide"]), t["split"]))
PY
)
echo "best down: $BEST"
G1="(4, 1024, 2, 1, True, True)"
TT="{(4, 1): ($G1, $BEST), (4, 2): ((16, 256, 2, 2, True, False), (16, 256, 1, 3, False, False, 8)), (8, 1): ((16, 512, 4, 1, False, False), (4, 1024, 2, 3, False, False, 1)), (8, 2): ((16, 512, 4, 1, True, False), (4, 1024, 2, 3, False, False, 2))}"
timeout 150 python3 scripts/step_probe.py --quant int4 --models mixtral --batches 1 \
  --variant table --variant "best:minimoe.kernels.fused_moe_quant_pair._TILES=$TT" --rounds 3 --steps 20 \
  --json $R/step_int4.json > $R/step_int4.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_int4.txt | tail -3
tar czf $OUT/r.tgz -C $OUT r
