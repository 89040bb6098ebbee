#!/usr/bin/env bash
# Issue 12, quantized weights, on one H200: correctness first, then every figure the issue names beside bf16
# measured in the same run.        bash scripts/gpu/quant.sh OUTDIR            (e.g. $OUT/quant)
#                                  bash scripts/gpu/quant.sh OUTDIR --smoke    (tiny shapes on a CPU: this script's test)
# WALL-TIME BUDGET: about 6 minutes on one H200 once the machine is up; hard cap 16 min (the sum of the
# timeouts; a bench row that errors is retried --eager). Steps in priority order, so a shorter lease still
# gets the most important figures first:
#   env 5 s | ceilings 10 s | check 60-100 s: every format's kernels against their oracles on real shapes, a
#   PASS/FAIL line each (Triton compiles are most of it, and later steps reuse them from the disk cache)
#   graphs 30-60 s: tests/test_quant_gpu.py (graphed decode == eager for int4 / fp8 / nf4, _scaled_mm == reference)
#   layer 45-60 s: one MoE layer (bench/layer.py), bf16 fused and quantized in the same CUDA-graph timing:
#     Mixtral M=1 int4 / int8 / nf4, Qwen3-30B-A3B fp8 M=1 / M=64, OLMoE fp8 M=64; floors and targets beside
#   bench rows, 128 in / 32 out, 1 warm-up + 1 timed run, CUDA graphs (a failed row is retried with --eager):
#     OLMoE bs64 bf16 / fp8 (2 x 25 s), Mixtral bs1 bf16 / int8 / int4 with --profile / nf4 (4 x 35 s)
#   summary 10 s: the whole-model figures against the targets (x bf16, % of floor, weights GB, peak GiB)
# EXTRA=1 adds Mixtral bs1 fp8 (its peak memory), a GEMV tile sweep for the M=1 targets and a kernel-by-kernel
# profile of Mixtral int4 (+2.5 min). SKIP="name ..." leaves steps out (e.g. SKIP="mixtral_bs1_nf4").
# Each step runs under `timeout`, its rc is logged, and the next step runs whatever happened. Results:
# OUTDIR/*.json (check, layer, sweep, every bench row, summary), OUTDIR/<step>.txt, OUTDIR/quant.log.
set -uo pipefail
OUT=${1:?usage: scripts/gpu/quant.sh OUTDIR [--smoke]}
SMOKE=${2:-}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
LOG=$OUT/quant.log
skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
step() {   # step NAME SECONDS CMD...: tee to OUTDIR/NAME.txt, drop bench's one-line JSON from the screen
  local name=$1 secs=$2; shift 2
  if skip "$name"; then echo "=== $name skipped" | tee -a "$LOG"; return; fi
  echo "=== $name ($(date +%T)): $*" | tee -a "$LOG"
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  grep -v '^{' "$OUT/$name.txt" | grep -v -i 'warning' | tail -n 40
  echo "=== $name rc=$rc$([ $rc = 124 ] && echo ' (timed out)')" | tee -a "$LOG"
  return $rc
}

# bitsandbytes without pip: BNB_WHEEL=path/to/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl is unzipped
# and put on PYTHONPATH (a wheel is a zip; the package loads libbitsandbytes_cuda130.so from its own folder)
if [ -n "${BNB_WHEEL:-}" ] && [ -f "$BNB_WHEEL" ]; then
  python3 -m zipfile -e "$BNB_WHEEL" /tmp/bnb_site && export PYTHONPATH=/tmp/bnb_site:$PYTHONPATH
fi

if [ "$SMOKE" = "--smoke" ]; then      # the same steps on tiny cards, fp32, interpreted kernels
  export TRITON_INTERPRET=1
  Q="--smoke"; OLMOE=olmoe-tiny; MIXTRAL=mixtral-tiny
  BENCH=(--device cpu --dtype fp32 --input-len 4 --output-len 3 --iters 1 --warmup 0)
  BS64=2
else
  Q=""; OLMOE=olmoe; MIXTRAL=mixtral
  BENCH=(--input-len 128 --output-len 32 --iters 1 --warmup 1)
  BS64=64
fi

step env 30 python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')
try:
    import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)
except Exception as e: print('bitsandbytes not importable:', e)"
step ceilings 60 python3 scripts/quant_gpu.py ceilings --out "$OUT" $Q
C=(--ceilings "$OUT/ceilings.json")
[ -f "$OUT/ceilings.json" ] || C=()
step check 150 python3 scripts/quant_gpu.py check --out "$OUT" $Q
[ "$SMOKE" = "--smoke" ] || step graphs 120 python3 -m pytest -q -rf -m gpu tests/test_quant_gpu.py
step layer 120 python3 scripts/quant_gpu.py layer --out "$OUT" $Q

bench() {  # bench NAME SECONDS ARGS...: one bench.py row and its JSON; an error (not a timeout) is retried --eager
  local name=$1 secs=$2; shift 2
  step "$name" "$secs" python3 bench.py "${BENCH[@]}" "${C[@]}" --json "$OUT/$name.json" "$@"
  local rc=$?
  if [ $rc != 0 ] && [ $rc != 124 ] && ! skip "$name"; then
    step "${name}_eager" "$secs" python3 bench.py "${BENCH[@]}" "${C[@]}" --eager --json "$OUT/${name}_eager.json" "$@"
  fi
}
bench olmoe_bs64_bf16 60 --model $OLMOE --fused --bs $BS64
bench olmoe_bs64_fp8 60 --model $OLMOE --fused --bs $BS64 --quant fp8
bench mixtral_bs1_bf16 70 --model $MIXTRAL --fused --bs 1
bench mixtral_bs1_int8 70 --model $MIXTRAL --fused --bs 1 --quant int8 --profile
bench mixtral_bs1_int4 70 --model $MIXTRAL --fused --bs 1 --quant int4 --profile
bench mixtral_bs1_nf4 90 --model $MIXTRAL --fused --bs 1 --quant nf4
if [ -n "${EXTRA:-}" ]; then
  bench mixtral_bs1_fp8 70 --model $MIXTRAL --fused --bs 1 --quant fp8
  step sweep 120 python3 scripts/quant_gpu.py sweep --out "$OUT" $Q
  [ "$SMOKE" = "--smoke" ] || step profile_int4 90 python3 scripts/profile_step.py --model mixtral --bs 1 --quant int4 \
    --json "$OUT/profile_mixtral_int4.json"
fi
step summary 60 python3 scripts/quant_gpu.py summary --out "$OUT" $Q
echo "=== done ($(date +%T)); results in $OUT" | tee -a "$LOG"
