#!/usr/bin/env bash
# Session 8, call 4 on nvidia-h200 (~7 min): as call 3 without the one-kernel attention merge (measured slower
# there): graphed == eager greedy tokens for every family (tests/test_gpu.py) and the fused norm + gate tests; bench.py
# at batch 1 (128 / 128) for OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite and Mixtral-8x7B with the seventh session's code
# (baseline_s7.tgz, carried) and this code, one after the other per model; the OLMoE batch-1 kernel table.
# Usage (device tool, repo root, carry baseline_s7.tgz): bash scripts/gpu/session8_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/base && tar xzf baseline_s7.tgz -C /tmp/base
timeout 150 python3 -m pytest -q tests/test_gpu.py tests/test_gate_splitk.py -k "gpu or graph or norm_gate or eager" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 128"
(cd /tmp/base && PYTHONPATH=/tmp/base timeout 90 python3 bench.py --model olmoe $C --json $R/olmoe_ceil.json > $R/olmoe_ceil.txt 2>&1)
python3 -c "import json;c=json.load(open('$R/olmoe_ceil.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
run() {  # label dir model extra...
  local label=$1 dir=$2 m=$3; shift 3
  (cd $dir && PYTHONPATH=$dir timeout 100 python3 bench.py --model $m $C --ceilings $R/ceil.json "$@" --json $R/${m}_$label.json > $R/${m}_$label.txt 2>&1)
  echo "$m $label rc $?: $(grep 'minimoe bs' $R/${m}_$label.txt)"
}
for m in olmoe qwen3 deepseek-v2-lite mixtral; do
  run base /tmp/base $m
  run new $ROOT $m
done
timeout 90 python3 scripts/profile_step.py --model olmoe --bs 1 --steps 10 --json $R/prof_olmoe_bs1.json > $R/prof_olmoe_bs1.txt 2>&1
grep "decode:" $R/prof_olmoe_bs1.txt; sed -n '/one layer in launch order/,$p' $R/prof_olmoe_bs1.txt
cd $OUT && tar czf r.tgz r && rm -rf r
