"""Memory planning: will this request fit, and if not, what would?

Before anything is allocated, estimate weights + KV cache + the largest transient workspace (the
prefill of B*in tokens: hidden states, q/k/v, the expert path's per-(token, slot) buffers, router
scores, logits). If the sum exceeds the GPU's free memory, stop with the numbers and the largest
batch that would fit, instead of an out-of-memory traceback halfway through a sweep. The estimate
is deliberately a little pessimistic (x1.2 on the workspace).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..kv_cache import KVCache
from ..loader import build_meta, ram_bytes, weight_bytes
from .prompts import length_sampler
from .roofline import stored_bytes

GiB = 2 ** 30


@dataclass
class MemoryPlan:
    weights: int
    kv: int
    workspace: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.workspace

    def describe(self) -> str:
        return (f"{self.total / GiB:.1f} GiB (weights {self.weights / GiB:.1f} + KV cache {self.kv / GiB:.1f} "
                f"+ workspace {self.workspace / GiB:.1f})")


def workspace_bytes(cfg: ModelConfig, batch: int, seq: int, nbytes: int, top_k: int | None = None) -> int:
    T = batch * seq
    K = top_k or cfg.top_k
    D = cfg.hidden_size
    hidden = 6 * T * D * nbytes
    if cfg.attention == "mla":   # expanded prefill materialises per-head k and v
        attn = T * cfg.n_heads * (2 * cfg.qk_head_dim + 2 * cfg.v_head_dim) * nbytes
    else:
        attn = T * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim * nbytes
    ffn = 3 * T * cfg.intermediate_size * nbytes if cfg.n_layers > 0 else 0
    if cfg.is_moe:
        I = cfg.moe_intermediate_size
        experts = T * K * ((2 * D + 3 * I) * nbytes + 4 * D)      # permuted rows, gate/up, act, fp32 weighted out
        router = 4 * T * cfg.n_experts * 4
        shared = 3 * T * cfg.shared_intermediate_size * nbytes
        ffn = max(ffn, experts + router + shared)
    logits = 3 * batch * cfg.vocab_size * 4
    return int(1.2 * (hidden + attn + ffn + logits))


def plan(cfg: ModelConfig, weight_bytes: int, batch: int, in_len: int, out_len: int, nbytes: int,
         top_k: int | None = None) -> MemoryPlan:
    kv = KVCache.bytes_needed(cfg, batch, in_len + out_len, nbytes)
    return MemoryPlan(weight_bytes, kv, workspace_bytes(cfg, batch, in_len, nbytes, top_k))


def largest_batch(cfg, weight_bytes, in_len, out_len, nbytes, free, top_k=None, limit=1 << 16) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan(cfg, weight_bytes, mid, in_len, out_len, nbytes, top_k).total <= free:
            lo = mid
        else:
            hi = mid - 1
    return lo


def free_bytes(device) -> int | None:
    """Free memory where the run allocates: the GPU's, or this machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    ram = ram_bytes() if device.type == "cpu" else None
    return ram[0] if ram is not None else None


def check_request(cfg, weight_bytes, batch, in_len, out_len, nbytes, device, top_k=None, extra=0,
                  weights_resident: bool = False) -> MemoryPlan:
    """Raise MemoryError with the plan and the largest batch that fits, or return the plan.
    weights_resident: the weights are already allocated, so their bytes are not in `free`."""
    p = plan(cfg, weight_bytes, batch, in_len, out_len, nbytes, top_k)
    free = free_bytes(device)
    if free is None:
        return p
    free -= extra
    if weights_resident:
        free += weight_bytes
    if p.total > free:
        best = largest_batch(cfg, weight_bytes, in_len, out_len, nbytes, free, top_k)
        hint = f"the largest batch that fits is {best}" if best else "even batch 1 does not fit"
        raise MemoryError(f"batch {batch} x ({in_len}+{out_len}) tokens needs {p.describe()}, "
                          f"but only {free / GiB:.1f} GiB are free; {hint}")
    return p


def planned_weight_bytes(cfg: ModelConfig, settings) -> int:
    """The weights as the run will hold them: the dtype's width, or a quantized format's stored bytes
    (codes + scales, bench/roofline.stored_bytes). Loading a bf16 checkpoint for --quant holds the
    bf16 model for a moment; the loader checks that peak itself (loader.check_fits)."""
    if settings.quant != "none":
        fmt = {"quant": settings.quant, "lm_head": settings.quant_lm_head}
    elif cfg.extra.get("quantization_config"):
        fmt = {"quant": "fp8-block", "lm_head": False}
    else:
        return weight_bytes(build_meta(cfg, None, settings.torch_dtype))
    st = stored_bytes(cfg, fmt)
    return st.total_packed + st.plain * settings.torch_dtype.itemsize


def check_weights(cfg: ModelConfig, settings, configs) -> None:
    """Before the model is built: weights + KV cache + workspace of the largest configuration that
    will run must fit where the run allocates (GPU memory, or RAM on a CPU)."""
    wbytes = planned_weight_bytes(cfg, settings)
    for b, n_in, n_out in configs:
        longest = length_sampler(n_in).longest if isinstance(n_in, str) else n_in
        check_request(cfg, wbytes, b, longest, n_out, settings.torch_dtype.itemsize, settings.device, settings.top_k)
