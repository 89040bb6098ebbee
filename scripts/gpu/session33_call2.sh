#!/usr/bin/env bash
# Session 33, call 2 on nvidia-h200 (~9 min): the rank top-k (route.TOPK_RANK_MAX_E: two reductions instead of 2K
# argmax rounds) and the session-32 pending attention knobs (decode_attention.EARLY_TILE, decode_attention_merge.
# EARLY_LOADS): their GPU tests; registers / spills of the router fold with and without the rank; the graphed
# decode step at bs 1 of Qwen3-30B-A3B, OLMoE, Qwen1.5-MoE, DeepSeek-V2-Lite, and at bs 4 / 16 / 64 (the unfolded routers).
# (Call 1 ran this with route.py's constants as plain Python globals: every rank kernel failed to compile.)
# Usage (device tool, repo root): bash scripts/gpu/session33_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
timeout 200 python3 -m pytest -q tests/test_topk_rank.py tests/test_decode_attention.py -k "rank or early or tile_merge or gqa or graph" > $R/pytest.txt 2>&1
echo "--- pytest rc $? t=$SECONDS"; tail -2 $R/pytest.txt
timeout 90 python3 - > $R/regs.txt 2>&1 <<'PY'
import torch
from minimoe.kernels import gate_splitk, route
from minimoe.kernels.gate_splitk_fold import norm_gate_route_splitk
real = gate_splitk._gate_partial_kernel
got = []
class Keep:
    def __getitem__(self, grid):
        return lambda *a, **k: got.append(real[grid](*a, **k))
gate_splitk._gate_partial_kernel = Keep()
for E, K in ((128, 8), (64, 8), (60, 4)):
    D = 2048
    x = torch.randn(1, D, device="cuda", dtype=torch.bfloat16); r = torch.randn_like(x)
    nw = torch.ones(D, device="cuda", dtype=torch.bfloat16); g = torch.randn(E, D, device="cuda", dtype=torch.bfloat16)
    for rank in (0, 512):
        route.TOPK_RANK_MAX_E = rank
        norm_gate_route_splitk(x, r, nw, 1e-6, g, K, renorm=True)
        c = got[-1]
        print(f"E {E} K {K} rank {rank}: regs {c.n_regs} spills {c.n_spills} warps {c.metadata.num_warps}")
PY
echo "--- regs rc $? t=$SECONDS"; cat $R/regs.txt | tail -6
K=minimoe.kernels.route.TOPK_RANK_MAX_E; K1=minimoe.kernels.route.TOPK_RANK_MAX_E_ONE_WARP; T=minimoe.kernels.decode_attention.EARLY_TILE; L=minimoe.kernels.decode_attention_merge.EARLY_LOADS
probe() {  # tag model batches variants...
  local tag=$1 m=$2 b=$3; shift 3
  timeout 170 python3 scripts/step_probe.py --models $m --batches $b --input-len 128 --steps 60 --rounds 3 \
    --variant base "$@" --variant base2 --json $R/step_$tag.json > $R/step_$tag.txt 2>&1
  echo "--- $tag rc $? t=$SECONDS"; grep -v "^#" $R/step_$tag.txt | tail -7
}
probe qwen3_bs1 qwen3 1 --variant rank:$K=512 --variant tile:$T=True --variant loads:$L=True --variant all:$K=512,$T=True,$L=True
probe olmoe_bs1 olmoe 1 --variant rank:$K=512 --variant tile:$T=True --variant loads:$L=True --variant all:$K=512,$T=True,$L=True
probe qwen15_bs1 qwen1.5-moe 1 --variant rank:$K=512 --variant all:$K=512,$T=True,$L=True
probe dsv2_bs1 deepseek-v2-lite 1 --variant rank:$K=512
probe qwen3_bs4 qwen3 "4 16" --variant rank:$K=512 --variant rank1:$K1=512 --variant rank_both:$K=512,$K1=512
probe olmoe_bs16 olmoe "16 64" --variant rank:$K=512 --variant rank1:$K1=512
tar czf $OUT/r.tgz -C $OUT r
