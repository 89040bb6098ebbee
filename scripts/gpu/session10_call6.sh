#!/usr/bin/env bash
# Session 10, call 6 on nvidia-h200 (~5 min): the bf16 decode MoE's GEMM2 releases its successor early
# (pdl.release_args; still launched in stream order). Same call, bs 1, 128 / 128: the code before it
# (baseline_s10b.tgz = 8a419b2, carried) and after, OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite, Qwen1.5-MoE, one round
# GPU tests: test_gpu.py -k "pdl or fused_shared" (graphed == eager, every tiny family).
# Usage (device tool, repo root; carry baseline_s10b.tgz): bash scripts/gpu/session10_call6.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R /tmp/base
tar xzf baseline_s10b.tgz -C /tmp/base
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "pdl or fused_shared" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
PYTHONPATH=$PWD timeout 60 python3 bench.py --model olmoe $W --json $R/olmoe_new1.json > $R/olmoe_new1.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe_new1.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for i in 1; do
  for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe; do
    [ $SECONDS -gt 520 ] && { echo "$m round $i: skipped (time)"; continue; }
    (cd /tmp/base && PYTHONPATH=/tmp/base timeout 60 python3 bench.py --model $m $W --ceilings $R/ceil.json --json $R/${m}_base$i.json > $R/${m}_base$i.txt 2>&1)
    [ -f $R/${m}_new$i.json ] || PYTHONPATH=$PWD timeout 60 python3 bench.py --model $m $W --ceilings $R/ceil.json --json $R/${m}_new$i.json > $R/${m}_new$i.txt 2>&1
    echo "$m round $i: base $(grep -h 'minimoe bs' $R/${m}_base$i.txt | awk '{print $8}') new $(grep -h 'minimoe bs' $R/${m}_new$i.txt | awk '{print $8}')"
  done
done
tar czf $OUT/r.tgz -C $OUT r
