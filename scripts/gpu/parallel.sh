#!/usr/bin/env bash
# Issue 15 on the 2 x H200 NVLink machine: expert and tensor parallelism, every plan checked, then timed.
#   bash scripts/gpu/parallel.sh "$OUT/parallel"            (repo root; device tool kind nvidia-h200-x2)
#   bash scripts/gpu/parallel.sh /tmp/par --smoke           (any CPU: gloo, tiny cards, the whole script end to end)
# WALL-TIME BUDGET: about 5 min on 2 GPUs; hard cap 6 min 10 s (the timeouts below add up to 370 s):
#   olmoe    check (fp32, 4 layers) + exchange micro-benchmark + ceilings + time      expect ~65 s, cap 100 s
#   mixtral  check + time (1 GPU, TP2, EP2 x allgather | padded | alltoall)           expect ~110 s, cap 140 s
#   qwen3    check + time                                                             expect ~95 s, cap 110 s
#   cost model against the measurements, targets (CPU)                                expect ~10 s, cap 20 s
# Rows without a CUDA graph (the alltoall design syncs with the host) decode EAGER_OUT_LEN=16 tokens: ~1-2 ms per
# layer eagerly would otherwise cost a minute per model. Graph-captured rows decode OUT_LEN=128.
# Trim with env: MODELS="olmoe mixtral", BS="1 64", DESIGNS="allgather padded" (DESIGNS="": no EP2), ALLREDUCE=nccl, OUT_LEN=64, WARMUP=0, PDL=on
# (PDL: --pdl for every row, default auto = off under a plan; PDL=on checks and times the plans with it).
# TP2 runs once per ALLREDUCE design (default both: NCCL, and the one-shot over symmetric memory).
# Each model is its own torchrun launch under `timeout`: one failure (or a hang) costs only its cap.
# Prints: per plan PASS/FAIL (logits within fp32 rounding, same greedy tokens, same tokens from the graphed
# decode), the dispatch+combine and all-reduce micro-benchmark (us per layer), one table per model (ITL p50,
# the roofline floor of the plan's GPUs, the cost model's prediction, out tok/s, speedup vs 1 GPU), the cost
# model's error on every 2-GPU row, and the four acceptance targets (PASS / MISS).
# Writes $1/summary.txt (all of the above) and $1/parallel.tgz (one JSON per model, the logs): 2 files.
set -u
DIR=${1:?usage: parallel.sh OUTDIR [--smoke]}
SMOKE=${2:-}
mkdir -p "$DIR"
R=$(mktemp -d)
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # NVLink multicast stays off
BS=${BS:-1 16 64}; DESIGNS=${DESIGNS-allgather padded alltoall}; ALLREDUCE=${ALLREDUCE:-nccl symm}; PDL=${PDL:-auto}
case "$PDL" in auto|on|off) ;; *) echo "parallel.sh: PDL=$PDL: choose auto, on or off" >&2; exit 2;; esac
if [ "${2:-}" = "--smoke" ]; then                                # symmetric memory and PDL need GPUs
  [ "$PDL" = on ] && echo "parallel.sh: PDL=on ignored under --smoke (CPUs have no PDL): PDL=auto" >&2
  ALLREDUCE=nccl PDL=auto
fi
COMMON="--bs $BS --designs $DESIGNS --allreduce $ALLREDUCE --pdl $PDL --output-len ${OUT_LEN:-128} --eager-output-len ${EAGER_OUT_LEN:-16} --warmup ${WARMUP:-1} --iters 1 --out $R --ceilings $R/ceilings.json"
if [ "$SMOKE" = "--smoke" ]; then
  MODELS=${MODELS:-olmoe-tiny mixtral-tiny}; COMMON="$COMMON --smoke"; CAPS="olmoe-tiny:240 mixtral-tiny:240"
else
  MODELS=${MODELS:-olmoe mixtral qwen3}; CAPS="olmoe:100 mixtral:140 qwen3:110"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$R/gpus.txt" 2>&1
  nvidia-smi topo -m >> "$R/gpus.txt" 2>&1
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'nccl', torch.cuda.nccl.version())" >> "$R/gpus.txt" 2>&1
fi
cap() { for c in $CAPS; do [ "${c%%:*}" = "$1" ] && echo "${c##*:}" && return; done; echo 120; }
{
  echo "# parallel.sh: MODELS=\"$MODELS\" BS=\"$BS\" DESIGNS=\"$DESIGNS\" ALLREDUCE=\"$ALLREDUCE\" PDL=$PDL OUT_LEN=${OUT_LEN:-128}"
  cat "$R/gpus.txt" 2>/dev/null
  for m in $MODELS; do
    echo "=== $m ($(date +%T), cap $(cap $m) s)"
    PROFILE=$([ "${m%-tiny}" = olmoe ] && echo --profile)     # OLMoE: dispatch/combine/all-reduce per layer in the model
    timeout -k 10 "$(cap $m)" torchrun --standalone --nproc-per-node 2 scripts/bench_parallel.py --model "$m" $COMMON \
      $PROFILE > "$R/$m.log" 2>&1
    echo "--- $m exit status $?"
    grep -E "^(#|##|plan|1 GPU|TP2|EP2)" "$R/$m.log"
    grep -E "Error|error" "$R/$m.log" | grep -v "^#" | sort | uniq -c | head -5
  done
  echo "=== cost model: calibrated on these runs, predicted vs measured, targets, more GPUs ($(date +%T))"
  timeout 20 python3 scripts/parallel_cost_model.py --measured "$R"/*.json $([ "$SMOKE" = "--smoke" ] && echo "--models olmoe-tiny")
} 2>&1 | tee "$DIR/summary.txt"
tar czf "$DIR/parallel.tgz" -C "$R" .
