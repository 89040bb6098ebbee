#!/usr/bin/env bash
# s21 call 3: the gate fold's new defaults (gate_splitk BLOCK_E 16, BLOCK_D 256, PREFETCH_GATE on) against the old
# ones (8, 128, off) in the graphed step of every model whose gate takes the split-K path, at batch 1 and 8; then
# bench.py bs 1 on the three models with bs-1 targets (Qwen3-30B-A3B 400, OLMoE 1,050, DeepSeek-V2-Lite 500 out
# tok/s); then at bs 64 (OLMoE, DeepSeek-V2-Lite): the router on the split-K kernel (splitk64) and the norm folded
# into it (fold64) in place of RMSNorm + cuBLAS gate + top-k; then the gate_splitk / norm_route GPU tests.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
G=minimoe.kernels.gate_splitk
for m in qwen3 olmoe deepseek-v2-lite qwen1.5-moe; do
  B="1 8"; [ $m = qwen1.5-moe ] && B=1
  timeout 110 python3 scripts/step_probe.py --models $m --batches $B --variant base \
    "--variant=old:$G.BLOCK_D=128,$G.BLOCK_E=8,$G.PREFETCH_GATE=False" \
    --rounds 3 --steps 40 --json $R/step_new_$m.json > $R/step_new_$m.txt 2>&1
  echo "--- probe $m rc $?"; grep -v "^#" $R/step_new_$m.txt | tail -4
done
O=minimoe.ops
for m in olmoe deepseek-v2-lite; do
  timeout 120 python3 scripts/step_probe.py --models $m --batches 64 --variant base \
    "--variant=splitk64:$O.SPLITK_MAX_T=64,$G.MAX_T=64" "--variant=fold64:$O.SPLITK_MAX_T=64,$G.MAX_T=64,$O.FOLD_MAX_T=64" \
    --rounds 2 --steps 20 --json $R/step_bs64_$m.json > $R/step_bs64_$m.txt 2>&1
  echo "--- probe bs 64 $m rc $?"; grep -v "^#" $R/step_bs64_$m.txt | tail -3
done
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1"
timeout 60 python3 bench.py --model qwen3 $W --json $R/bench_qwen3.json > $R/bench_qwen3.txt 2>&1
python3 -c "import json;c=json.load(open('$R/bench_qwen3.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
for m in olmoe deepseek-v2-lite; do
  timeout 60 python3 bench.py --model $m $W --ceilings $R/ceil.json --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
done
for f in $R/bench_*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
[ $SECONDS -lt 440 ] && timeout 150 python3 -m pytest -q tests/test_gate_splitk.py tests/test_norm_route.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
