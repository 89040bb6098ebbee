#!/usr/bin/env bash
# Session 9, call 5 on nvidia-h200 (~8 min): PDL with the dense decode GEMVs launched early and the MoE's GEMM2
# never (kernels/pdl.py), `--pdl on` against `--pdl off`, same code, same GPU, same ceilings:
#  1. tests/test_gpu.py -k pdl (graphed == eager greedy tokens with PDL, every tiny family, full-size OLMoE);
#  2. bench.py 128 / 128: OLMoE and DeepSeek-V2-Lite bs 1 and 64, Qwen3-30B-A3B and Mixtral-8x7B bs 1.
# Usage (device tool, repo root): bash scripts/gpu/session9_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k pdl > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest_gpu.txt
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 90 python3 bench.py --model olmoe $C --bs 1 64 --pdl off --json $R/olmoe_off.json > $R/olmoe_off.txt 2>&1
python3 -c "import json;c=json.load(open('$R/olmoe_off.json'))['ceilings'];c.pop('source');json.dump(c,open('$R/ceil.json','w'))"
run() {  # model pdl bs...
  m=$1; p=$2; shift 2
  timeout 100 python3 bench.py --model $m $C --bs "$@" --pdl $p --ceilings $R/ceil.json --json $R/${m}_$p.json > $R/${m}_$p.txt 2>&1
}
run olmoe on 1 64
run deepseek-v2-lite off 1 64
run deepseek-v2-lite on 1 64
run qwen3 off 1
run qwen3 on 1
run mixtral off 1
run mixtral on 1
for f in $R/*_o*.txt; do echo "$(basename $f): $(grep -h 'minimoe bs' $f | tr '\n' '|')"; done
tar czf $OUT/r.tgz -C $OUT r
