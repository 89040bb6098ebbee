#!/usr/bin/env bash
# Session 8, call 1 on nvidia-h200 (~6 min): the greedy tail kernel (kernels/greedy.py) against PyTorch's in CUDA
# graphs (scripts/bench_greedy.py, checked first), its GPU tests, and kernel tables with the new one-layer launch-order
# view (scripts/profile_step.py) of the batch-1 graphed decode steps of OLMoE, Mixtral, Qwen3-30B-A3B and
# DeepSeek-V2-Lite, to place the next batch-1 fusions.
# Usage (device tool, repo root): bash scripts/gpu/session8_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $R/gpu.txt
timeout 120 python3 -m pytest -q tests/test_greedy.py > $R/pytest_greedy.txt 2>&1; echo "--- pytest rc $?"; tail -3 $R/pytest_greedy.txt
timeout 150 python3 scripts/bench_greedy.py --json $R/greedy.json > $R/greedy.txt 2>&1; echo "--- greedy rc $?"; cat $R/greedy.txt
for mb in olmoe:1 mixtral:1 qwen3:1 deepseek-v2-lite:1; do
  m=${mb%:*}; b=${mb#*:}
  timeout 150 python3 scripts/profile_step.py --model $m --bs $b --steps 10 --json $R/prof_${m}_bs$b.json > $R/prof_${m}_bs$b.txt 2>&1
  echo "--- $m bs $b rc $?"; grep "decode:" $R/prof_${m}_bs$b.txt; sed -n '/one layer in launch order/,$p' $R/prof_${m}_bs$b.txt
done
