#!/usr/bin/env bash
# Session 25, call 1 on nvidia-h200 (~8 min): prefill's small kernels (DeepSeek-V2-Lite at 64 x 128 tokens spends
# ~116 µs a layer in a torch.cat, ~50 in a strided copy and ~100 in the torch alignment: s24 call 2's prefill table).
#  1. the new kernels' tests on the GPU (bf16): the chunked alignment, MLA's one-pass key and c_out;
#  2. scripts/bench_mla_prefill.py: MLA prefill's pieces against their bytes; scripts/bench_align.py: every method,
#     decode and prefill sizes;
#  3. the graphed prefill, variants interleaved: base (chunked alignment + one-pass MLA) vs torch alignment vs the
#     cat MLA vs both old (DeepSeek-V2-Lite bs 64; OLMoE and Qwen3-30B-A3B bs 64 for the alignment alone);
#  4. a PDL-off kernel profile of DeepSeek-V2-Lite bs 64 (prefill and decode) on this code.
# Usage (device tool, repo root): bash scripts/gpu/session25_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_moe_align.py tests/test_mla_rope.py > $R/pytest_new.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_new.txt
timeout 60 python3 scripts/bench_mla_prefill.py --json $R/mla_prefill.json > $R/mla_prefill.txt 2>&1
echo "--- mla rc $?"; cat $R/mla_prefill.txt
timeout 90 python3 scripts/bench_align.py --chunks 32 64 > $R/align.txt 2>&1
echo "--- align rc $?"; cat $R/align.txt
OLD_ALIGN=minimoe.kernels.moe_align.LARGE_METHOD=\'torch\'
timeout 200 python3 scripts/step_probe.py --prefill --models deepseek-v2-lite --batches 64 --variant base \
  --variant align_torch:$OLD_ALIGN --variant mla_cat:minimoe.mla.PREFILL_ONE_PASS=False \
  --variant both_old:$OLD_ALIGN,minimoe.mla.PREFILL_ONE_PASS=False --rounds 3 --steps 5 \
  --json $R/prefill_dsv2.json > $R/prefill_dsv2.txt 2>&1
echo "--- probe dsv2 rc $?"; grep -v "^#" $R/prefill_dsv2.txt | tail -5
timeout 150 python3 scripts/step_probe.py --prefill --models olmoe qwen3 --batches 64 --variant base \
  --variant align_torch:$OLD_ALIGN --rounds 3 --steps 5 --json $R/prefill_align.json > $R/prefill_align.txt 2>&1
echo "--- probe align rc $?"; grep -v "^#" $R/prefill_align.txt | tail -5
[ $SECONDS -lt 480 ] && { timeout 100 python3 scripts/profile_step.py --model deepseek-v2-lite --bs 64 --steps 10 \
  --pdl off --json $R/prof_dsv2_bs64_nopdl.json > $R/prof_dsv2_bs64_nopdl.txt 2>&1; echo "--- prof rc $?"; \
  head -30 $R/prof_dsv2_bs64_nopdl.txt; }
tar czf $OUT/r.tgz -C $OUT r
