#!/usr/bin/env bash
# Session 5, call 2 on nvidia-h200-x2 (~7 min).
#  GPU 0: dense decode GEMVs: cuBLAS vs kernels/gemv.py (41 configs) vs the MoE down kernel as a dense GEMV
#         (dense_gemv, 10 configs) on the drafts' and the targets' projection shapes, T = 1 / 2 / 4
#         (scripts/bench_gemv.py); then whole decode steps at bs 1 with --gemv torch / triton / stream:
#         Qwen3-0.6B (the draft), OLMoE, Qwen3-30B-A3B (one process per run, shared ceilings).
#  GPU 1: issue 13 (skipping folded into the routing kernels): scripts/gpu/prune.sh, every variant of OLMoE and
#         Qwen1.5-MoE at bs 1 / 16 / 64, plus the 2048/2048 rows.
# Usage (device tool, repo root): bash scripts/gpu/session5_call2.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH=$PWD TQDM_DISABLE=1 NCCL_NVLS_ENABLE=0
R=$OUT/r; mkdir -p $R
B="--fused --warmup 1 --iters 3 --input-len 128 --output-len 64"
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  timeout 240 python3 scripts/bench_gemv.py --tokens 1 2 4 --workers 12 --json $R/gemv.json > $R/gemv.txt 2>&1
  timeout 60 python3 bench.py --model qwen3-0.6b ${B#--fused } --bs 1 --gemv torch --json $R/bs1_q06_torch.json > $R/bs1_q06_torch.txt 2>&1
  python3 -c "import json;c=json.load(open('$R/bs1_q06_torch.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
  for g in triton stream; do
    timeout 60 python3 bench.py --model qwen3-0.6b ${B#--fused } --bs 1 --gemv $g --ceilings $R/ceil.json --json $R/bs1_q06_$g.json > $R/bs1_q06_$g.txt 2>&1
  done
  for m in olmoe qwen3; do for g in torch triton stream; do
    timeout 80 python3 bench.py --model $m $B --bs 1 --gemv $g --ceilings $R/ceil.json --json $R/bs1_${m}_$g.json > $R/bs1_${m}_$g.txt 2>&1
  done; done
}
lane1() {
  export CUDA_VISIBLE_DEVICES=1
  timeout 420 bash scripts/gpu/prune.sh $R/prune > $R/prune_sh.log 2>&1
}
lane0 & L0=$!
lane1 & L1=$!
wait $L0 $L1
tar czf $OUT/results.tgz -C $OUT r
cat $R/gemv.txt | grep -v "^ \|failed" | head -60
grep -h "minimoe bs" $R/bs1_*.txt
grep -h "MET\|MISSED\|x unpruned\|skip\|none " $R/prune/prune.log | head -40
