#!/usr/bin/env bash
# What we run on the GPU machine (the `device` tool), phase by phase; every result lands in $OUT.
#   bash scripts/gpu_run.sh env check layer headline        (any subset, in order)
# Each phase has its own time limit so one failure cannot eat the whole lease.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
R=/tmp/results; mkdir -p $R          # JSON results, packed into $OUT/results.tar at the end (8 files max come back)
trap 'tar cf "$OUT/results.tar" -C /tmp results' EXIT
log() { echo "=== $* ($(date +%T))"; }
b() { echo "$ bench.py ${*:2}" >> $R/tables.txt; timeout "$1" python3 bench.py "${@:2}" 2>&1 | grep -v '^{' | tee -a $R/tables.txt; }   # table only; the JSON goes to --json
for phase in "$@"; do
  case $phase in
    env) log env; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
         python3 -c "import torch, triton, transformers; print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__)" ;;
    newcheck) log newcheck   # the kernels added this session, with failures named; graphed == eager
         timeout 300 python3 -m pytest -q -rf tests/test_folded.py tests/test_gemv.py tests/test_norm_route.py \
           tests/test_moe_align.py tests/test_fused_moe.py tests/test_gpu.py 2>&1 | tee $R/newcheck.txt | tail -30 ;;
    check) log check
         timeout 450 python3 -m pytest -q -rf tests/test_small_kernels.py tests/test_fused_moe.py tests/test_decode_attention.py tests/test_gpu.py \
           tests/test_folded.py tests/test_gemv.py tests/test_norm_route.py tests/test_moe_align.py 2>&1 | tee $R/check.txt | tail -25 ;;
    tune) log tune
         timeout 240 python3 scripts/tune_fused_moe.py --out minimoe/kernels/configs 2>&1 | tail -60
         tar cf "$OUT/configs.tar" minimoe/kernels/configs ;;
    profile) log profile   # kernel-by-kernel graphed decode step (scripts/profile_step.py)
         for spec in ${PROFILE:-olmoe:1 olmoe:64 mixtral:1}; do
           timeout 150 python3 scripts/profile_step.py --model ${spec%%:*} --bs ${spec##*:} \
             --json "$R/profile_${spec%%:*}_bs${spec##*:}.json" 2>&1 | grep -v Warning | tee -a $R/profile.txt
         done ;;
    pdl) log pdl; timeout 60 python3 scripts/pdl_probe.py 2>&1 | tee $R/pdl.txt ;;
    micro) log micro   # kernel micro-benchmarks that pick defaults (align, GEMV, small-batch MoE)
         timeout 90 python3 scripts/bench_align.py 2>&1 | tee $R/bench_align.txt | tail -40
         timeout 150 python3 scripts/bench_gemv.py --json $R/bench_gemv.json 2>&1 | tee $R/bench_gemv.txt | tail -60
         timeout 150 python3 scripts/bench_moe_small.py --json $R/bench_moe_small.json 2>&1 | tee $R/bench_moe_small.txt | tail -60 ;;
    ceilings) log ceilings; python3 -c "from minimoe.roofline import measure_ceilings; print(measure_ceilings('cuda'))" | tee $R/ceilings.txt ;;
    layer) log layer; timeout 200 python3 bench.py --layer --json "$R/layer.json" 2>&1 | grep -v '^{' ;;
    headline) log headline
         b 240 --model olmoe --fused --bs 64 --profile --compare transformers --json "$R/olmoe_bs64.json"
         b 60 --model olmoe --fused --bs 1 --profile --json "$R/olmoe_bs1.json"
         b 90 --model qwen3 --fused --bs 64 --json "$R/qwen3_bs64.json"
         b 90 --model mixtral --fused --bs 1 --profile --json "$R/mixtral_bs1.json" ;;
    ablation) log ablation   # OLMoE bs 64, 128/128: one optimization added per row
         [ -n "${WITH_LOOP:-}" ] && b 90 --model olmoe --bs 64 --experts loop --eager --attn sdpa --ops torch --warmup 0 --iters 1 --json "$R/abl1.json"
         b 60 --model olmoe --bs 64 --experts grouped --eager --attn sdpa --ops torch --json "$R/abl2.json"
         b 60 --model olmoe --bs 64 --experts fused --eager --attn sdpa --ops torch --json "$R/abl3.json"
         b 60 --model olmoe --bs 64 --experts fused --attn sdpa --ops torch --eager-prefill --json "$R/abl4.json"
         b 60 --model olmoe --bs 64 --experts fused --attn triton --ops torch --eager-prefill --json "$R/abl5.json"
         b 60 --model olmoe --bs 64 --experts fused --attn triton --ops triton --eager-prefill --json "$R/abl6.json"
         b 60 --model olmoe --bs 64 --experts fused --attn triton --ops triton --json "$R/abl7.json" ;;
    final) log final   # PDL: graphed == eager, then A/B on the two batch-1 targets
         timeout 150 python3 -m pytest -q -rf tests/test_gpu.py -k "pdl" 2>&1 | tee $R/final_check.txt | tail -8
         b 90 --model mixtral --fused --bs 1 --json "$R/mixtral_bs1_pdl.json"
         b 90 --model mixtral --fused --bs 1 --pdl off --json "$R/mixtral_bs1_nopdl.json"
         b 50 --model olmoe --fused --bs 1 --json "$R/olmoe_bs1_pdl.json"
         b 50 --model olmoe --fused --bs 1 --pdl off --json "$R/olmoe_bs1_nopdl.json" ;;
    compare) log compare; b 240 --model olmoe --fused --bs 64 --compare transformers --json "$R/olmoe_compare.json" ;;
    models) log models   # README tables: bs 1/16/64 x 128/128 and 1024/1024, transformers in the same run
         for m in ${MODELS:-olmoe qwen3 qwen1.5-moe deepseek-v2-lite mixtral}; do
           b 200 --model $m --fused --bs 1 16 64 --compare transformers --compare-steps 16 --json "$R/${m}_128.json"
           b 240 --model $m --fused --bs 1 16 64 --input-len 1024 --output-len 1024 --warmup 1 --iters 1 \
                 --compare transformers --compare-steps 8 --json "$R/${m}_1024.json"
         done ;;
    *) echo "unknown phase $phase" ;;
  esac
done
