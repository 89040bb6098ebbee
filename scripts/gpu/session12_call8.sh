#!/usr/bin/env bash
# Session 12, call 8 on nvidia-h200 (~6 min): do the quantized decode layers gain in the step from pairing x inside
# the kernel (no pack_pairs launch before each dense layer) rather than in a kernel of its own? Mixtral bs 1, graphed
# step (scripts/step_probe.py): int8 and fp8 base vs dense x plain; int4 base vs dense x plain vs dense and GEMM1 x plain.
# Usage (device tool, repo root): bash scripts/gpu/session12_call8.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
P=minimoe.kernels.fused_moe_quant_pair
DP="$P._DENSE={4:(32,512,4,3,False,False,1),8:(4,1024,2,3,False,False,1)}"
TP="$P._TILES={(4,1):((32,256,4,1,False,False),(16,256,1,3,False,False,8)),(4,2):((16,256,2,2,True,False),(16,256,1,3,False,False,8)),(8,1):((16,512,4,1,False,False),(4,1024,2,3,False,False,1)),(8,2):((16,512,4,1,True,False),(4,1024,2,3,False,False,2))}"
for q in int8 fp8 int4; do
  [ $SECONDS -gt 400 ] && { echo "$q: skipped (time)"; continue; }
  V="--variant base --variant dense_plain:$DP"
  [ $q = int4 ] && V="$V --variant all_plain:$DP,$TP"
  PYTHONPATH=$PWD timeout 170 python3 scripts/step_probe.py --quant $q --models mixtral $V --rounds 2 --json $R/step_$q.json > $R/step_$q.txt 2>&1
  echo "--- $q rc $?"; grep -v "^#" $R/step_$q.txt | tail -4
done
tar czf $OUT/r.tgz -C $OUT r
