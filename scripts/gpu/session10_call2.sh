#!/usr/bin/env bash
# Session 10, call 2 on nvidia-h200 (~8 min): the stream GEMV's bias epilogue (Qwen1.5's q/k/v at batch 1) and
# joined launch (linear_pair: MLA's q + latent projections), beside `--fuse-shared` (call 1):
#  1. GPU tests: test_gemv.py (bias, joined, models), test_shared_fusion.py, test_gpu.py -k "pdl or fused_shared";
#  2. bench bs 1 / 2, 128 / 128, same call: the ninth session's code (baseline_s10.tgz = f532e25, carried),
#     this code, and this code with `--fuse-shared off`: DeepSeek-V2-Lite, Qwen1.5-MoE;
#  3. the graphed bs-1 step's kernels of both (scripts/profile_step.py).
# Usage (device tool, repo root; carry baseline_s10.tgz): bash scripts/gpu/session10_call2.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R /tmp/base
tar xzf baseline_s10.tgz -C /tmp/base
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_gemv.py tests/test_shared_fusion.py tests/test_gpu.py -k "pdl or fused_shared or shared_fusion or pair or bias or model_equals or dense_gemv or kernel or fits or settings" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 2"
PYTHONPATH=$PWD timeout 90 python3 bench.py --model deepseek-v2-lite $B --json $R/deepseek-v2-lite_new.json > $R/deepseek-v2-lite_new.txt 2>&1
python3 -c "import json;c=json.load(open('$R/deepseek-v2-lite_new.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in deepseek-v2-lite qwen1.5-moe; do
  [ -f $R/${m}_new.json ] || PYTHONPATH=$PWD timeout 90 python3 bench.py --model $m $B --ceilings $R/ceil.json --json $R/${m}_new.json > $R/${m}_new.txt 2>&1
  (cd /tmp/base && PYTHONPATH=/tmp/base timeout 90 python3 bench.py --model $m $B --ceilings $R/ceil.json --json $R/${m}_base.json > $R/${m}_base.txt 2>&1)
  PYTHONPATH=$PWD timeout 90 python3 bench.py --model $m $B --fuse-shared off --ceilings $R/ceil.json --json $R/${m}_nofuse.json > $R/${m}_nofuse.txt 2>&1
  for v in base nofuse new; do echo "$m $v: $(grep -h 'minimoe bs' $R/${m}_$v.txt | awk '{print $2, $8}' | tr '\n' ' ')"; done
done
for m in deepseek-v2-lite qwen1.5-moe; do
  PYTHONPATH=$PWD timeout 120 python3 scripts/profile_step.py --model $m --bs 1 --steps 10 --json $R/prof_${m}_bs1.json > $R/prof_${m}_bs1.txt 2>&1
  echo "--- prof $m rc $?"; grep -m1 "bs1 decode:" $R/prof_${m}_bs1.txt
done
tar czf $OUT/r.tgz -C $OUT r
