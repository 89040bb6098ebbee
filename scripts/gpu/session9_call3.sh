#!/usr/bin/env bash
# Session 9, call 3 on nvidia-h200 (~9 min): the README's five models x bs 1 / 16 / 64 (128 in / 128 out) with this
# code (models_*.json), then with the seventh session's code (baseline_s7.tgz, a git archive of 0e2979a; old_*.json)
# for bs 16 / 64, same GPU and ceilings: the eighth session's changes must not slow what was fast.
# Usage (device tool, repo root, carry baseline_s7.tgz): bash scripts/gpu/session9_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/base && tar xzf baseline_s7.tgz -C /tmp/base
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py --model olmoe $B --bs 1 16 64 --json $R/models_olmoe_128.json > $R/models_olmoe_128.txt 2>&1
python3 -c "import json;c=json.load(open('$R/models_olmoe_128.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in qwen3 qwen1.5-moe deepseek-v2-lite mixtral; do
  timeout 100 python3 bench.py --model $m $B --bs 1 16 64 --ceilings $R/ceil.json --json $R/models_${m}_128.json > $R/models_${m}_128.txt 2>&1
done
grep -h "minimoe bs" $R/models_*.txt
for m in olmoe qwen3 qwen1.5-moe deepseek-v2-lite mixtral; do
  [ $SECONDS -gt 480 ] && { echo "old $m: skipped (time)"; continue; }
  (cd /tmp/base && PYTHONPATH=/tmp/base timeout 80 python3 bench.py --model $m $B --bs 16 64 --ceilings $R/ceil.json \
    --json $R/old_${m}_128.json > $R/old_${m}_128.txt 2>&1)
  echo "old $m: $(grep -h 'minimoe bs' $R/old_${m}_128.txt | tr '\n' '|')"
done
tar czf $OUT/r.tgz -C $OUT r
