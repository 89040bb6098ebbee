#!/usr/bin/env bash
# Session 10, call 3 on nvidia-h200 (~9 min): MLA's absorbed projections as one Triton launch each at batch 1-2
# (kernels/head_gemv.py, the ops table's head_gemv) on top of calls 1-2 (--fuse-shared, the stream GEMV's bias
# epilogue and joined launch):
#  1. GPU tests: test_head_gemv.py, test_ops.py (triton ops == torch ops, every tiny family), test_gpu.py -k
#     "pdl or fused_shared" (graphed == eager, batch 1 / 2 / 4), test_gemv.py -k model_equals;
#  2. bench 128 / 128, same call, the ninth session's code (baseline_s10.tgz = f532e25, carried) -> this code:
#     DeepSeek-V2-Lite bs 1 / 2 / 16 / 64, Qwen1.5-MoE bs 1 / 16 / 64, OLMoE and Qwen3-30B-A3B bs 1 (untouched: a guard);
#  3. the graphed bs-1 step's kernels of DeepSeek-V2-Lite (scripts/profile_step.py).
# Usage (device tool, repo root; carry baseline_s10.tgz): bash scripts/gpu/session10_call3.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R /tmp/base
tar xzf baseline_s10.tgz -C /tmp/base
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_head_gemv.py tests/test_ops.py tests/test_gpu.py tests/test_gemv.py -k "head_gemv or triton_ops or pdl or fused_shared or model_equals" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
PYTHONPATH=$PWD timeout 100 python3 bench.py --model deepseek-v2-lite $W --bs 1 2 16 64 --json $R/deepseek-v2-lite_new.json > $R/deepseek-v2-lite_new.txt 2>&1
python3 -c "import json;c=json.load(open('$R/deepseek-v2-lite_new.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for mb in "deepseek-v2-lite 1 2 16 64" "qwen1.5-moe 1 16 64" "olmoe 1" "qwen3 1"; do
  set -- $mb; m=$1; shift
  [ $SECONDS -gt 480 ] && { echo "$m: skipped (time)"; continue; }
  [ -f $R/${m}_new.json ] || PYTHONPATH=$PWD timeout 100 python3 bench.py --model $m $W --bs "$@" --ceilings $R/ceil.json --json $R/${m}_new.json > $R/${m}_new.txt 2>&1
  (cd /tmp/base && PYTHONPATH=/tmp/base timeout 100 python3 bench.py --model $m $W --bs "$@" --ceilings $R/ceil.json --json $R/${m}_base.json > $R/${m}_base.txt 2>&1)
  for v in base new; do echo "$m $v: $(grep -h 'minimoe bs' $R/${m}_$v.txt | awk '{print $2, $8}' | tr '\n' ' ')"; done
done
[ $SECONDS -lt 530 ] && PYTHONPATH=$PWD timeout 60 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 1 --steps 10 --json $R/prof_deepseek-v2-lite_bs1.json > $R/prof_deepseek-v2-lite_bs1.txt 2>&1
grep -m1 "bs1 decode:" $R/prof_deepseek-v2-lite_bs1.txt
tar czf $OUT/r.tgz -C $OUT r
