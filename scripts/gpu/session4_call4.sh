#!/usr/bin/env bash
# Session 4, call 4 on nvidia-h200-x2 (~5 min): the final split-plan rule (1 K tile per split only when the
# grid does not fill the SMs once) checked where call 3 saw -1.1% (Qwen3-30B-A3B bs 64).
#  GPU 0: OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite x bs 1 / 16 / 64 and Mixtral bs 1, this code then the
#         landed code (.baseline/, HEAD ed6a46b), same GPU, same ceilings.
#  GPU 1: GPU tests of decode attention and MLA; speculative sweep (bs 1 / 16, G 4) and the trained models.
# Usage (device tool, repo root): bash scripts/gpu/session4_call4.sh   (carry .baseline)
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 90 python3 bench.py --model olmoe $B --bs 1 16 64 --json $R/models_olmoe_128.json > $R/models_olmoe_128.txt 2>&1
  python3 -c "import json;c=json.load(open('$R/models_olmoe_128.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
  for m in qwen3 deepseek-v2-lite; do
    timeout 100 python3 bench.py --model $m $B --bs 1 16 64 --ceilings $R/ceil.json --json $R/models_${m}_128.json > $R/models_${m}_128.txt 2>&1
  done
  timeout 100 python3 bench.py --model mixtral $B --bs 1 --ceilings $R/ceil.json --json $R/models_mixtral_128.json > $R/models_mixtral_128.txt 2>&1
  for m in olmoe qwen3 deepseek-v2-lite; do
    (cd .baseline && PYTHONPATH=$PWD timeout 100 python3 bench.py --model $m $B --bs 1 16 64 --ceilings $R/ceil.json \
      --json $R/old_${m}_128.json > $R/old_${m}_128.txt 2>&1)
  done
  (cd .baseline && PYTHONPATH=$PWD timeout 100 python3 bench.py --model mixtral $B --bs 1 --ceilings $R/ceil.json \
      --json $R/old_mixtral_128.json > $R/old_mixtral_128.txt 2>&1)
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_decode_attention.py tests/test_mla_rope.py > $R/kernel_tests.log 2>&1
  echo "rc=$?" >> $R/kernel_tests.log
  timeout 120 python3 scripts/bench_spec.py sweep --out $R/spec --batches 1 16 --gammas 4 --drafts Qwen3-0.6B > $R/spec_sweep.log 2>&1
  timeout 120 python3 scripts/bench_spec.py trained --out $R/spec > $R/spec_trained.log 2>&1
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
tail -n 2 $R/kernel_tests.log; grep -h "minimoe bs" $R/models_*.txt $R/old_*.txt; grep -h "run G\|T_T" $R/spec_sweep.log | head
grep -h "speed-up\|alpha" $R/spec_trained.log | head -20
