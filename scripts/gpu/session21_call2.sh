#!/usr/bin/env bash
# s21 call 2: combinations of the gate-fold knobs that won alone on Qwen3 in call 1 (bd256 -2.41%, be16 -1.41%,
# prefetch -0.94%), on Qwen3 and OLMoE bs 1; then the gate_splitk GPU tests with a longer limit.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
G=minimoe.kernels.gate_splitk
for m in qwen3 olmoe; do
  timeout 170 python3 scripts/step_probe.py --models $m --batches 1 --variant base \
    "--variant=bd256:$G.BLOCK_D=256" "--variant=bd256e16:$G.BLOCK_D=256,$G.BLOCK_E=16" \
    "--variant=bd256p:$G.BLOCK_D=256,$G.PREFETCH_GATE=True" \
    "--variant=bd256e16p:$G.BLOCK_D=256,$G.BLOCK_E=16,$G.PREFETCH_GATE=True" \
    "--variant=bd512:$G.BLOCK_D=512" "--variant=bd512e16:$G.BLOCK_D=512,$G.BLOCK_E=16" \
    "--variant=e16p:$G.BLOCK_E=16,$G.PREFETCH_GATE=True" "--variant=be32:$G.BLOCK_E=32" \
    --rounds 2 --steps 40 --json $R/step_combo_$m.json > $R/step_combo_$m.txt 2>&1
  echo "--- probe bs 1 $m rc $?"; grep -v "^#" $R/step_combo_$m.txt | tail -9
done
timeout 200 python3 -m pytest -q -x tests/test_gate_splitk.py tests/test_norm_route.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
