#!/usr/bin/env bash
# Forty-second session, call 5 (~4 min): the defaults as landed (o_splitk.MODE "auto", 2 slices, outputs <= 2048 wide,
# 16-64 tokens): bench.py OLMoE bs 64 twice; the split's GPU tests, every tiny family graphed == eager at bs 16 with
# the split (test_gpu.py), and OLMoE at full size graphed == eager (bs 1-64).
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s42_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
for i in 1 2; do
  timeout 40 python3 bench.py --model olmoe --fused --bs 64 --input-len 128 --output-len 128 --warmup 1 --iters 3 \
    --json $R/bench_olmoe64_$i.json > $R/bench_olmoe64_$i.txt 2>&1
  echo "--- bench olmoe64 $i rc $? t=$SECONDS"; grep -E "minimoe bs" $R/bench_olmoe64_$i.txt
done
tar czf $OUT/r.tgz -C $OUT r
timeout 150 python3 -m pytest -q -x tests/test_o_splitk.py tests/test_gpu.py -k "o_splitk or o_split or olmoe_full_size" \
  > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
tar czf $OUT/r.tgz -C $OUT r
