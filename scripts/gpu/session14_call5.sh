#!/usr/bin/env bash
# Session 14, call 5 on nvidia-h200 (warm, ~1 min): Mixtral int8 graphed step at bs 16 / 64 with the thirteenth
# session's int8 table (tuned on the word tiles) and then with call 3's re-tuned table (byte tiles), same machine,
# one step_probe run each. The re-tuned table was in the working tree as new_int8_table.json for this call.
# Usage (device tool, repo root): bash scripts/gpu/session14_call5.sh
export PYTHONPATH=$PWD TQDM_DISABLE=1; mkdir -p $OUT/r
F="minimoe/kernels/configs/E=8,I=14336,D=4096,K=2,device_name=NVIDIA_H200,dtype=int8_w8a16.json"
timeout 130 python3 scripts/step_probe.py --quant int8 --models mixtral --batches 16 64 --variant oldtable --rounds 3 \
  --steps 20 > $OUT/r/step_old.txt 2>&1
cp new_int8_table.json "$F"
timeout 130 python3 scripts/step_probe.py --quant int8 --models mixtral --batches 16 64 --variant newtable --rounds 3 \
  --steps 20 > $OUT/r/step_new.txt 2>&1
grep -v "^#" $OUT/r/step_old.txt | tail -2; grep -v "^#" $OUT/r/step_new.txt | tail -2
