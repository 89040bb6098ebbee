#!/usr/bin/env bash
# Session 8, call 3 on nvidia-h200 (~8 min): GPU tests of this session's kernels (greedy tail, one-kernel split
# attention, norm + split-K gate + top-k) and graphed == eager greedy tokens for every family; then bench.py at batch 1
# (128 in / 128 out, random weights, CUDA graphs) for OLMoE, Qwen3-30B-A3B, DeepSeek-V2-Lite and Mixtral-8x7B with
# the seventh session's code (baseline_s7.tgz: see docs/results/2026-11-30-s8/README.md, carried) and
# this code, one after the other per model on the same GPU; OLMoE also with --fold-norm off, and at batch 64.
# Usage (device tool, repo root, carry baseline_s7.tgz): bash scripts/gpu/session8_call3.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/base && tar xzf baseline_s7.tgz -C /tmp/base
timeout 170 python3 -m pytest -q -x tests/test_gate_splitk.py tests/test_greedy.py tests/test_decode_attention.py tests/test_gpu.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 128"
(cd /tmp/base && PYTHONPATH=/tmp/base timeout 90 python3 bench.py --model olmoe $C --json $R/olmoe_ceil.json > $R/olmoe_ceil.txt 2>&1)
python3 -c "import json;c=json.load(open('$R/olmoe_ceil.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
run() {  # label dir model extra...
  local label=$1 dir=$2 m=$3; shift 3
  (cd $dir && PYTHONPATH=$dir timeout 100 python3 bench.py --model $m $C --ceilings $R/ceil.json "$@" --json $R/${m}_$label.json > $R/${m}_$label.txt 2>&1)
  echo "$m $label rc $?: $(grep 'minimoe bs' $R/${m}_$label.txt)"
}
grep -B1 'minimoe bs' $R/olmoe_ceil.txt | head -2
run base /tmp/base olmoe
run new $ROOT olmoe
run nofold $ROOT olmoe --fold-norm off
for m in qwen3 deepseek-v2-lite mixtral; do
  run base /tmp/base $m
  run new $ROOT $m
done
C="--fused --bs 64 --warmup 1 --iters 2 --input-len 128 --output-len 128"
run base64 /tmp/base olmoe
run new64 $ROOT olmoe
cd $OUT && tar czf r.tgz r && rm -rf r
