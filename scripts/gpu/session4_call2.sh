#!/usr/bin/env bash
# Session 4, H200 call 2 (~9 min): GPU tests of the new kernels and graphed == eager for every family;
# decode-attention split sweep; router micro-benchmark; profiles of the new MLA step; DeepSeek-V2-Lite
# and OLMoE before (HEAD ed6a46b, unpacked in .baseline/) and after, one after the other on this GPU.
# Usage (device tool, repo root): bash scripts/gpu/session4_call2.sh   (carry .baseline)
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_mla_rope.py tests/test_gate_splitk.py \
  tests/test_decode_attention.py > $R/kernel_tests.log 2>&1; echo "rc=$?" >> $R/kernel_tests.log
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py > $R/gpu_tests.log 2>&1
echo "rc=$?" >> $R/gpu_tests.log
timeout 90 python3 scripts/bench_attn_splits.py --json $R/attn_splits.json > $R/attn_splits.txt 2>&1
timeout 60 python3 scripts/bench_router.py --json $R/router.json > $R/router.txt 2>&1
for b in 1 64; do
  timeout 90 python3 scripts/profile_step.py --model deepseek-v2-lite --bs $b --steps 20 \
    --json $R/prof_dsv2_bs$b.json > $R/prof_dsv2_bs$b.txt 2>&1
done
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 100 python3 bench.py --model deepseek-v2-lite --bs 1 64 $B --json $R/new_dsv2.json > $R/new_dsv2.txt 2>&1
python3 -c "import json;c=json.load(open('$R/new_dsv2.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
(cd .baseline && PYTHONPATH=$PWD timeout 100 python3 bench.py --model deepseek-v2-lite --bs 1 64 $B --ceilings $R/ceil.json \
  --json $R/old_dsv2.json > $R/old_dsv2.txt 2>&1)
timeout 80 python3 bench.py --model olmoe --bs 1 64 $B --ceilings $R/ceil.json --json $R/new_olmoe.json > $R/new_olmoe.txt 2>&1
tar czf $OUT/results.tgz -C $OUT r
tail -n 3 $R/kernel_tests.log $R/gpu_tests.log; cat $R/attn_splits.txt $R/router.txt | head -120
grep -h "^## " $R/prof_*.txt; grep -h "minimoe bs" $R/*_dsv2.txt $R/new_olmoe.txt
