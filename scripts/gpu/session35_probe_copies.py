"""Session 35 probe: which ATen ops launch the copy kernels of DeepSeek-V2-Lite's eager bs-64 prefill (8,192 tokens),
and SDPA's output strides at MLA's prefill shapes. One-off; prints tables.

    python scripts/gpu/session35_probe_copies.py [--model deepseek-v2-lite] [--bs 64] [--input-len 128]
"""
import argparse
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from minimoe import settings as run_settings
from minimoe.generate import Generator
from minimoe.loader import build_model

p = argparse.ArgumentParser()
p.add_argument("--model", default="deepseek-v2-lite")
p.add_argument("--bs", type=int, default=64)
p.add_argument("--input-len", type=int, default=128)
a = p.parse_args()
B, S, H = a.bs, a.input_len, 16
q = torch.randn(B, S, H * 192 + 576, device="cuda", dtype=torch.bfloat16)[..., :H * 192].view(B, S, H, 192)
k = torch.randn(B, S, H, 192, device="cuda", dtype=torch.bfloat16)
kv = torch.randn(B, S, H, 256, device="cuda", dtype=torch.bfloat16)
v = kv[..., 128:]
o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
print("sdpa out", tuple(o.shape), o.stride(), "transposed back contiguous:", o.transpose(1, 2).is_contiguous())
settings = run_settings.RunSettings(experts="fused", device="cuda").resolve()
model, cfg, _ = build_model(a.model, "dummy", dtype=settings.torch_dtype, device="cuda", settings=settings)
gen = Generator(model, B, S + 8)
prompts = torch.randint(0, cfg.vocab_size, (B, S), device="cuda")
gen.prefill(prompts)
torch.cuda.synchronize()
gen.reset()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
    gen.prefill(prompts)
    torch.cuda.synchronize()
rows = [e for e in prof.key_averages(group_by_input_shape=True)
        if any(w in e.key for w in ("copy", "clone", "contiguous", "cat", "reshape", "to_copy", "add", "mul"))
        and e.device_time_total > 50]
rows.sort(key=lambda e: -e.device_time_total)
print(f"{'op':40s} {'calls':>6s} {'device us':>10s}  shapes")
for e in rows[:40]:
    print(f"{e.key[:40]:40s} {e.count:6d} {e.device_time_total:10.1f}  {str(e.input_shapes)[:150]}")
sys.exit(0)
