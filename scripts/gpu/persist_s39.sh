#!/usr/bin/env bash
# Thirty-ninth session, call 1: the persistent decode attention (kernels/decode_attention_persistent.py) for full grids.
# (1) its GPU tests and the split kernel's; (2) the kernel alone against the one-split kernel (scripts/bench_attn_persistent.py,
# B 64 / 128, OLMoE / Qwen3-30B-A3B / Mixtral shapes, 138 / 202 / 256 of 272 and 1,000 of 2,048 entries, the persistent
# kernel's (programs an SM, stages) variants); (3) the graphed bs-64 step, PERSISTENT off / on (scripts/step_probe.py,
# OLMoE and Qwen1.5-MoE: 16 kv heads); (4) bench.py OLMoE bs 64 off / on.
# Usage (device tool, repo root, nvidia-h200, ~6 min): bash scripts/gpu/persist_s39.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/gpu.txt
timeout 150 python3 -m pytest -q tests/test_decode_attention_persistent.py tests/test_decode_attention.py > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -3 $R/pytest.txt
timeout 200 python3 scripts/bench_attn_persistent.py --batches 64 128 --json $R/attn.json > $R/attn.txt 2>&1
echo "--- attn rc $? t=$SECONDS"; cat $R/attn.txt
timeout 200 python3 scripts/step_probe.py --models olmoe qwen1.5-moe --batches 64 --input-len 128 --steps 60 --rounds 3 \
  --variant base --variant persist:minimoe.kernels.decode_attention.PERSISTENT=True \
  --variant persist3:minimoe.kernels.decode_attention.PERSISTENT=True,minimoe.kernels.decode_attention.PERSISTENT_STAGES=3 \
  --json $R/probe.json > $R/probe.txt 2>&1
echo "--- probe rc $? t=$SECONDS"; grep -v Warn $R/probe.txt | tail -12
for v in off on; do
  P=$([ $v = on ] && echo True || echo False)
  timeout 120 python3 -c "
import runpy, sys
import minimoe.kernels.decode_attention as d
d.PERSISTENT = $P
sys.argv = ['bench.py', '--model', 'olmoe', '--fused', '--bs', '64', '--input-len', '128', '--output-len', '128',
            '--warmup', '1', '--iters', '3', '--json', '$R/bench_olmoe64_$v.json']
runpy.run_path('bench.py', run_name='__main__')" > $R/bench_olmoe64_$v.txt 2>&1
  echo "--- bench $v rc $? t=$SECONDS"; grep -E "minimoe bs|ceilings" $R/bench_olmoe64_$v.txt
done
tar czf $OUT/r.tgz -C $OUT r
