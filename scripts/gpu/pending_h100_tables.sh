#!/usr/bin/env bash
# For an H100 call (kind nvidia-h100-x1), ~3 min (the tune took 31 s for 11 buckets): OLMoE's fused-MoE table tuned
# on the H100 itself (most lent machines are H100s, which have no tables and run the default rule; the H200's tables
# lost at bs 16 there in the forty-seventh session), then the graphed decode steps (bs 64 / 16 / 1) and the bs-64 prefill with that table against the rule.
# Where it wins beyond the rounds' spread, copy $OUT/r/configs/*.json into minimoe/kernels/configs/ and commit them
# with this call's output; repeat per model (--presets qwen3 / qwen15 / dsv2lite) in later calls.
# Forty-seventh session (docs/results/2026-12-05-s47/call7-8): the tuner's default buckets gave decode -0.17% / -0.09%
# (bs 64 / 16, within the rounds' spread) and the bs-64 prefill +0.94%: that table had no 8,192 bucket (the prefill's
# own T), so its 4,096 / 16,384 tiles (BLOCK_K 64, 3 stages) ran where the rule's (BLOCK_K 32, 5 stages) do better.
# Hence the 2,048 / 8,192 buckets below, as the H200's tables have.
# Usage (device tool, repo root, an H100): bash scripts/gpu/pending_h100_tables.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R/configs
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 380 python3 scripts/tune_fused_moe.py --presets olmoe --tma --workers 12 --out $R/configs \
  --buckets 1 8 16 32 64 128 256 512 1024 2048 4096 8192 16384 > $R/tune_olmoe.txt 2>&1
echo "--- tune rc $? t=$SECONDS"; ls $R/configs; tail -4 $R/tune_olmoe.txt | cut -c1-200
tar czf $OUT/r.tgz -C $OUT r
ls $R/configs/*.json > /dev/null 2>&1 || exit 1
V="h100table:minimoe.kernels.moe_configs.CONFIG_DIR='$R/configs'"
timeout 130 python3 scripts/step_probe.py --models olmoe --batches 64 16 1 --input-len 128 --steps 40 --rounds 3 \
  --variant base --variant "$V" --json $R/decode.json > $R/decode.txt 2>&1
echo "--- decode rc $? t=$SECONDS"; tail -7 $R/decode.txt
tar czf $OUT/r.tgz -C $OUT r
timeout 60 python3 scripts/step_probe.py --prefill --models olmoe --batches 64 --input-len 128 --steps 3 --rounds 3 \
  --variant base --variant "$V" --json $R/prefill.json > $R/prefill.txt 2>&1
echo "--- prefill rc $? t=$SECONDS"; tail -3 $R/prefill.txt
tar czf $OUT/r.tgz -C $OUT r
