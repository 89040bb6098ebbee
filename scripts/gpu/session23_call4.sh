#!/usr/bin/env bash
# Session 23, call 4 on nvidia-h200 (~6 min; carry .whl: bitsandbytes 0.50.2 unpacked): every GPU test on the final
# code (the shared expert inside the aligned fused MoE is now the default for 3-64 tokens: graphed == eager for every
# family at those batches), with bitsandbytes importable so the nf4 / bnb-int8 GPU cases run too (call 3's 100 s cap
# cut its quant tests after 46 passed).
# Usage (device tool, repo root, carry [".whl"]): bash scripts/gpu/session23_call4.sh
set -u
cp -r .whl/site /tmp/site || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
python3 -c "import bitsandbytes, torch, triton; print('bitsandbytes', bitsandbytes.__version__, torch.__version__, triton.__version__)" > $R/env.txt 2>&1
timeout 420 python3 -m pytest -q -p no:cacheprovider -rs -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; grep -E "passed|failed|FAILED|SKIPPED|Error" $R/pytest_gpu.txt | tail -12
tar czf $OUT/r.tgz -C $OUT r
