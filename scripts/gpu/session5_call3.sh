#!/usr/bin/env bash
# Session 5, call 3 on nvidia-h200-x2 (~8 min): `--gemv auto` (the stream GEMV at batch 1) on whole models.
#  GPU 0: GPU tests (graphed == eager for every family with the new default); OLMoE, Qwen3-30B-A3B,
#         DeepSeek-V2-Lite x bs 1 / 16 / 64 and Mixtral bs 1, --gemv auto then --gemv torch (the previous
#         default), same GPU, same ceilings; the Qwen3-0.6B draft alone at bs 1, auto vs torch.
#  GPU 1: speculative sweep (Qwen3-30B-A3B + 0.6B, G 4, A 0.8, bs 1 / 16, with the eager-rounds A/B) with
#         --gemv auto, then bs 1 with --gemv torch; the pruning targets at bs 1 (OLMoE, intra 25%, skip 1/3);
#         the quantized decode sweep (scripts/quant_decode_sweep.py).
# Usage (device tool, repo root): bash scripts/gpu/session5_call3.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > $R/gpu_tests.log 2>&1; echo "rc=$?" >> $R/gpu_tests.log
  timeout 100 python3 bench.py --model olmoe $B --bs 1 16 64 --json $R/auto_olmoe.json > $R/auto_olmoe.txt 2>&1
  python3 -c "import json;c=json.load(open('$R/auto_olmoe.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
  for m in qwen3 deepseek-v2-lite; do
    timeout 100 python3 bench.py --model $m $B --bs 1 16 64 --ceilings $R/ceil.json --json $R/auto_$m.json > $R/auto_$m.txt 2>&1
  done
  timeout 100 python3 bench.py --model mixtral $B --bs 1 --ceilings $R/ceil.json --json $R/auto_mixtral.json > $R/auto_mixtral.txt 2>&1
  for m in olmoe qwen3 deepseek-v2-lite; do
    timeout 100 python3 bench.py --model $m $B --bs 1 16 64 --gemv torch --ceilings $R/ceil.json --json $R/torch_$m.json > $R/torch_$m.txt 2>&1
  done
  timeout 100 python3 bench.py --model mixtral $B --bs 1 --gemv torch --ceilings $R/ceil.json --json $R/torch_mixtral.json > $R/torch_mixtral.txt 2>&1
  for g in auto torch; do
    timeout 60 python3 bench.py --model qwen3-0.6b --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 --gemv $g \
      --ceilings $R/ceil.json --json $R/${g}_q06.json > $R/${g}_q06.txt 2>&1
  done
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  timeout 200 python3 scripts/bench_spec.py sweep --out $R/spec_auto --batches 1 16 --gammas 4 --drafts Qwen3-0.6B \
    --ab-rounds > $R/spec_auto.log 2>&1
  timeout 100 python3 scripts/bench_spec.py sweep --out $R/spec_torch --batches 1 --gammas 4 --drafts Qwen3-0.6B \
    --gemv torch > $R/spec_torch.log 2>&1
  timeout 150 python3 scripts/bench_prune.py --out $R/prune_bs1 --models olmoe --bs 1 --inter --intra 0.25 --skip 0.3333 --iters 3 \
    --output-len 64 > $R/prune_bs1.log 2>&1
  [ -f scripts/quant_decode_sweep.py ] && timeout 240 python3 scripts/quant_decode_sweep.py --out $R/quant > $R/quant_sweep.log 2>&1
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
tail -n 3 $R/gpu_tests.log; grep -h "minimoe bs" $R/auto_*.txt $R/torch_*.txt
grep -h "run G\|T_T\|round G" $R/spec_auto.log $R/spec_torch.log | head -20
grep -h "olmoe " $R/prune_bs1.log | head; tail -n 30 $R/quant_sweep.log
