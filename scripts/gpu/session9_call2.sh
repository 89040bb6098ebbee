#!/usr/bin/env bash
# Session 9, call 2 on nvidia-h200 (~7 min): the int4 GEMM1 tile of one scale group a K-step (32 x 128) for wide
# experts and split-K counters that reset themselves (no memset launch per MoE layer), against the eighth session's
# code (baseline_s8.tgz, a git archive of 3fd09b6) in the same call:
#  1. GPU tests of the quantized kernels (PTX against dequantize-then-matmul; graphed == eager);
#  2. Mixtral-8x7B bs 1, 128 in / 64 out: bf16, int4 and int8 with the base and the new code.
# Usage (device tool, repo root, carry baseline_s8.tgz): bash scripts/gpu/session9_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/base && tar xzf baseline_s8.tgz -C /tmp/base
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py tests/test_quant_pair.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
C="--model mixtral --fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 64"
timeout 75 python3 bench.py $C --json $R/mixtral_bf16.json > $R/mixtral_bf16.txt 2>&1
python3 -c "import json;c=json.load(open('$R/mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
echo "bf16: $(grep 'minimoe bs' $R/mixtral_bf16.txt)"
run() {  # label dir quant
  (cd $2 && PYTHONPATH=$2 timeout 85 python3 bench.py $C --quant $3 --ceilings $R/ceil.json --json $R/mixtral_$3_$1.json > $R/mixtral_$3_$1.txt 2>&1)
  echo "$3 $1 rc $?: $(grep 'minimoe bs' $R/mixtral_$3_$1.txt)"
}
run base /tmp/base int4
run new $ROOT int4
run base /tmp/base int8
run new $ROOT int8
tar czf $OUT/r.tgz -C $OUT r
