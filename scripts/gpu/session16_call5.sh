#!/usr/bin/env bash
# Session 16, call 5 on nvidia-h200 (~5 min): call 4's chained int4 tiles (narrow GEMM2 and dense layers wide, GEMM1
# wide at T = 2) in the graphed bs-1 step against call 3's defaults (fused_moe_quant_pair.CHAINED_TILES), OLMoE,
# Qwen3-30B-A3B and Mixtral int4; the GPU tests of the pair kernels on the new tiles; OLMoE / Qwen3 int4 bs-1 rows.
# Usage (device tool, repo root): bash scripts/gpu/session16_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 100 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_quant_gpu.py -k "pair_ptx or int4_checkpoint" \
  > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt | cut -c1-300
timeout 200 python3 scripts/step_probe.py --quant int4 --models olmoe qwen3 mixtral --batches 1 \
  --variant new --variant "call3:minimoe.kernels.fused_moe_quant_pair.CHAINED_TILES=False" --rounds 3 --steps 20 \
  --json $R/step_int4.json > $R/step_int4.txt 2>&1
echo "--- probe rc $?"; grep -v "^#" $R/step_int4.txt | tail -7
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for m in olmoe qwen3; do
  [ $SECONDS -gt 330 ] && { echo "$m: skipped (time)"; continue; }
  timeout 70 python3 bench.py --model $m $W --bs 1 --quant int4 --json $R/${m}_int4.json > $R/${m}_int4.txt 2>&1
  echo "$m int4: $(grep -h 'minimoe bs' $R/${m}_int4.txt)"
done
tar czf $OUT/r.tgz -C $OUT r
