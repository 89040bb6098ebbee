"""Rooflines: the bytes a decode step must move and the FLOPs a prefill must run, and the ceilings.

A decode step at batch B reads every non-expert weight once (attention, norms, routers, shared
experts, the LM head; only B rows of the embedding), the weights of the experts the router actually
touched (at OLMoE's E=64, K=8 that is 1-(56/64)^B of them: 12% at B=1, all of them from B~32), and
the filled part of the KV cache. Bytes over the measured copy bandwidth is the floor of the step
time. A prefill of T tokens runs 2 FLOPs per active weight per token plus the attention matmuls;
FLOPs over the measured bf16 matmul peak is its floor. A measured figure above its ceiling means the
measurement is wrong, and the benchmark says so.

Parameter counts come from the model itself (built on the `meta` device), so they always describe
exactly what minimoe runs; tests check them against each model's published total. A quantized model
(`--quant`, or a pre-quantized checkpoint) is quantized on the meta device the same way and its bytes
are counted tensor by tensor (codes, scales, zero points), so % of floor compares against the bytes
the run really streams, not a dtype width (`StoredBytes`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from .. import quant
from ..config import ModelConfig
from ..loader import build_meta
from ..settings import RunSettings

try:
    from ..kernels.stream_read import stream_sum
except ImportError:     # no Triton: the probe is skipped (it only runs on a GPU anyway)
    stream_sum = None


@dataclass
class StoredBytes:
    """A quantized model's weights as stored (quant.py, prequant.py): the bytes of its packed tensors
    (codes, scales, zero points, codebooks) and the parameters left in the compute dtype, counted from
    the model itself, quantized on the meta device. Roofline bytes come from here, not a dtype width."""
    fmt: str
    packed: int         # packed bytes outside the routed experts (attention, shared experts, maybe the head)
    plain: int          # parameters outside the routed experts still in the compute dtype (router, norms, embedding)
    per_expert: float   # packed bytes of one routed expert (all three matrices, scales included)
    total_packed: int   # every packed byte


@dataclass
class ParamCounts:
    total: int          # every stored parameter
    expert: int         # routed experts (all E, all MoE layers)
    per_expert: int     # one routed expert of one layer
    embed: int          # input embedding (read B rows per step, not all of it)
    stored: StoredBytes | None = None   # the real bytes when the weights are quantized

    def weight_bytes(self, wbytes: int) -> int:
        """Bytes of all weights, as stored (quantized tensors at their real size)."""
        if self.stored is None:
            return self.total * wbytes
        return self.stored.total_packed + self.stored.plain * wbytes

    def active(self, cfg: ModelConfig, k: int | None = None) -> int:
        """Parameters one token uses: everything but the routed experts, plus K experts per MoE layer."""
        moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
        return self.total - self.expert + moe_layers * (k or cfg.top_k) * self.per_expert


def count_params(cfg: ModelConfig) -> ParamCounts:
    model = build_meta(cfg, None, torch.float32)
    total = expert = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if ".experts." in name:
            expert += p.numel()
    # one routed expert, averaged over the MoE layers: a width-pruned checkpoint's layers differ, and
    # layers x this mean is exactly the sum the active count and the step bytes need
    moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    per_expert = round(3 * cfg.hidden_size * sum(cfg.layer_moe_width(i) for i in moe) / len(moe)) if moe else 0
    fmt = quant.weight_format(cfg)
    stored = stored_bytes(cfg, fmt) if fmt else None
    return ParamCounts(total, expert, per_expert, model.embed.weight.numel(), stored)


_STORED: dict = {}


def stored_bytes(cfg: ModelConfig, fmt: dict) -> StoredBytes:
    """The counts a pre-quantized checkpoint's loader recorded from the loaded model (prequant.finalize_, one
    process: exactly what it holds, partial checkpoints included); else quantize a meta copy of the model the way
    the run did and count its tensors (seconds for a big model on the meta device, so remembered per
    configuration)."""
    if "stored" in fmt:
        return _stored(cfg, fmt["quant"], fmt["stored"])
    key = repr(dataclasses.replace(cfg, extra={})) + repr((fmt["quant"], fmt["lm_head"]))
    if key not in _STORED:
        model = build_meta(cfg, None, torch.float32)
        quant.quantize_(model, RunSettings(device="cpu", quant_lm_head=fmt["lm_head"]), fmt["quant"])
        _STORED[key] = _stored(cfg, fmt["quant"], quant.stored_counts(model))
    return _STORED[key]


def _stored(cfg: ModelConfig, name: str, c: dict) -> StoredBytes:
    n_experts = sum(cfg.layer_experts(i) for i in range(cfg.n_layers) if cfg.is_moe_layer(i))
    return StoredBytes(name, c["packed"], c["plain"], c["expert_bytes"] / max(n_experts, 1),
                       c["packed"] + c["expert_bytes"])


def decode_bytes(cfg: ModelConfig, pc: ParamCounts, batch: int, ctx_len: float, touched: float,
                 wbytes: int = 2, kvbytes: int = 2) -> dict:
    """Bytes one decode step must read. touched = experts hit per MoE layer (from the router). A
    quantized model's weights count at their stored size (pc.stored: codes + scales + zero points)."""
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    if pc.stored is not None:
        st = pc.stored
        dense = st.packed + (st.plain - pc.embed + batch * cfg.hidden_size) * wbytes
        experts = moe_layers * touched * st.per_expert
    else:
        dense = (pc.total - pc.expert - pc.embed + batch * cfg.hidden_size) * wbytes
        experts = moe_layers * touched * pc.per_expert * wbytes
    kv = cfg.n_layers * batch * ctx_len * cfg.kv_bytes_per_token(kvbytes)
    return {"weights": dense, "experts": experts, "kv": kv, "total": dense + experts + kv}


def prefill_flops(cfg: ModelConfig, pc: ParamCounts, batch: int, seq: int, k: int | None = None) -> float:
    """Matmul FLOPs of a causal prefill: 2 per active weight per token + attention (QKᵀ and PV, causal half)."""
    tokens = batch * seq
    linear = 2.0 * tokens * (pc.active(cfg, k) - pc.embed)
    if cfg.attention == "mla":   # expanded prefill: q·k over qk_head_dim, p·v over v_head_dim
        per_pair = cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    else:
        per_pair = 2 * cfg.n_heads * cfg.head_dim
    attn = 2.0 * cfg.n_layers * batch * per_pair * seq * (seq + 1) / 2
    return linear + attn


def expected_touched(n_experts: int, k: int, tokens: int) -> float:
    """Experts hit per layer by `tokens` tokens under uniform routing (for planning, not reporting)."""
    return n_experts * (1.0 - (1.0 - k / n_experts) ** tokens)


# ---- ceilings ------------------------------------------------------------------------------------


def median_ms(fn, iters: int, device: torch.device) -> float:
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def graph_us(calls, replays: int = 20) -> float:
    """Median µs per call of `calls` (zero-argument callables) captured back to back in one CUDA
    graph: launch overhead out, only the kernels' own time and their dependencies left. The calls
    run once first, so compilation and library workspaces happen outside the capture."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    del graph
    return sorted(times)[len(times) // 2]


STREAM_GRID = [(per_sm, unroll) for unroll in (1, 4) for per_sm in (2, 4, 8)]   # programs an SM, tiles in flight


def _stream_read_GBps(big: torch.Tensor) -> float:
    """Best of a few grid sizes and depths of the Triton streaming-read probe over `big` (kernels/stream_read.py)."""
    sms = torch.cuda.get_device_properties(big.device).multi_processor_count
    best = 0.0
    for per_sm, unroll in STREAM_GRID:
        programs, chunk = sms * per_sm, 4096 * unroll
        x = big[: big.numel() // (programs * chunk) * programs * chunk]
        stream_sum(x, programs, unroll=unroll)
        ms = median_ms(lambda: stream_sum(x, programs, unroll=unroll), 20, big.device)
        best = max(best, x.numel() * x.element_size() / ms / 1e6)
    return best


def measure_ceilings(device) -> dict:
    """Memory bandwidth and matmul peak, measured here in a few seconds.

    Bandwidth is the largest of a device copy (bytes read + written), a read-only `torch.sum` and,
    on a GPU, a plain Triton streaming read: a decode step mostly *reads* weights, and on the H200
    a read stream runs a few percent faster than a copy, so a copy-only ceiling would call real
    measurements impossible."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = (1 << 30) if cuda else (1 << 25)                        # 1 GiB on a GPU, 32 MiB on a CPU
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    bw_ms = median_ms(lambda: dst.copy_(src), 20 if cuda else 5, device)
    big = torch.randn(2 * n // 2, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    big.sum()
    read_ms = median_ms(lambda: big.sum(dtype=torch.float32), 20 if cuda else 5, device)
    read_bytes = big.numel() * big.element_size()
    stream = _stream_read_GBps(big) if cuda else None
    del big
    m = 8192 if cuda else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    mm_ms = median_ms(lambda: a @ b, 10 if cuda else 3, device)
    del src, dst, a, b
    copy, read = 2 * n / bw_ms / 1e6, read_bytes / read_ms / 1e6
    return {"bandwidth_GBps": max(copy, read, stream or 0.0), "copy_GBps": copy, "read_GBps": read,
            "stream_read_GBps": stream,
            "matmul_TFLOPs": 2 * m ** 3 / mm_ms / 1e9, "matmul_dtype": str(dtype).replace("torch.", ""),
            "source": "measured"}
