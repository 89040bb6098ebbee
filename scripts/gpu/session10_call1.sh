#!/usr/bin/env bash
# Session 10, call 1 on nvidia-h200 (~8 min): `--fuse-shared` (shared_fusion.py), the shared expert inside the routed
# experts' decode kernels (batch 1-2 of DeepSeek-V2-Lite and Qwen1.5-MoE):
#  1. GPU tests: tests/test_shared_fusion.py (compiled kernels, fp32 / fp16) and test_gpu.py -k fused_shared
#     (graphed == eager with the fusion, PDL on);
#  2. bench, same call, `--fuse-shared off` -> on, bs 1 and 2, 128 / 128: DeepSeek-V2-Lite, Qwen1.5-MoE;
#  3. the graphed bs-1 step's kernels, DeepSeek-V2-Lite and Qwen1.5-MoE (scripts/profile_step.py), fusion on.
# Usage (device tool, repo root): bash scripts/gpu/session10_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_shared_fusion.py tests/test_gpu.py -k "fused_shared or shared_fusion or kernel or model or fits or settings" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 2"
timeout 90 python3 bench.py --model deepseek-v2-lite $B --fuse-shared off --json $R/deepseek-v2-lite_off.json > $R/deepseek-v2-lite_off.txt 2>&1
python3 -c "import json;c=json.load(open('$R/deepseek-v2-lite_off.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in deepseek-v2-lite qwen1.5-moe; do
  for f in on off; do
    [ -f $R/${m}_$f.json ] && continue
    timeout 90 python3 bench.py --model $m $B --fuse-shared $f --ceilings $R/ceil.json --json $R/${m}_$f.json > $R/${m}_$f.txt 2>&1
  done
  echo "$m off: $(grep -h 'minimoe bs' $R/${m}_off.txt | awk '{print $2, $7}' | tr '\n' ' ')"
  echo "$m on : $(grep -h 'minimoe bs' $R/${m}_on.txt | awk '{print $2, $7}' | tr '\n' ' ')"
done
for m in deepseek-v2-lite qwen1.5-moe; do
  timeout 120 python3 scripts/profile_step.py --model $m --bs 1 --steps 10 --json $R/prof_${m}_bs1.json > $R/prof_${m}_bs1.txt 2>&1
  echo "--- prof $m rc $?"; grep -m1 "decode:" $R/prof_${m}_bs1.txt
done
tar czf $OUT/r.tgz -C $OUT r
