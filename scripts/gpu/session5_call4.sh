#!/usr/bin/env bash
# Session 5, call 4 on nvidia-h200-x2 (~9 min).
#  Both GPUs: issue 15's full grid (scripts/gpu/parallel.sh: OLMoE, Mixtral, Qwen3-30B-A3B x bs 1 / 16 / 64 x
#             1 GPU / TP2 / EP2 allgather / padded / alltoall, every plan checked first), with this session's
#             defaults (--gemv auto).
#  Then, one lane per GPU, issue 12's whole-model rows with the new quantized decode defaults, bf16 beside each in
#  the same lane: GPU 0 Mixtral-8x7B bs 1 bf16 / int8 / int4 (--profile on int4); GPU 1 Mixtral bs 1 fp8, OLMoE
#  bs 64 bf16 / fp8; then the speculative sweep with the Qwen3-1.7B draft (bs 1 / 16, G 4, A 0.8) under --gemv auto.
# Usage (device tool, repo root): bash scripts/gpu/session5_call4.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
timeout 380 bash scripts/gpu/parallel.sh $R/parallel > $R/parallel_sh.log 2>&1
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 64"
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 60 python3 bench.py --model mixtral $B --bs 1 --json $R/q_mixtral_bf16.json > $R/q_mixtral_bf16.txt 2>&1
  python3 -c "import json;c=json.load(open('$R/q_mixtral_bf16.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
  for q in int8 int4; do
    timeout 70 python3 bench.py --model mixtral $B --bs 1 --quant $q --ceilings $R/ceil.json --json $R/q_mixtral_$q.json \
      > $R/q_mixtral_$q.txt 2>&1
  done
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  sleep 20
  timeout 70 python3 bench.py --model mixtral $B --bs 1 --quant fp8 --json $R/q_mixtral_fp8.json > $R/q_mixtral_fp8.txt 2>&1
  for q in none fp8; do
    timeout 60 python3 bench.py --model olmoe $B --bs 64 --quant $q --json $R/q_olmoe_$q.json > $R/q_olmoe_$q.txt 2>&1
  done
  timeout 110 python3 scripts/bench_spec.py sweep --out $R/spec17 --batches 1 16 --gammas 4 --drafts Qwen3-1.7B \
    > $R/spec17.log 2>&1
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
grep -E "^(plan|1 GPU|TP2|EP2|PASS|MISS|FAIL)|target|exit status" $R/parallel/summary.txt | head -60
grep -h "minimoe bs\|error" $R/q_*.txt
grep -h "run G\|T_T\|round G" $R/spec17.log
