"""MLA prefill's key: every head's k = [k_nope_h, k_pe] written in one pass, instead of torch.cat over an expand.

At prefill (mla.py `_expanded`) MLA materialises per-head keys from the latent: wkv_b gives k_nope and v for every
head, and the one rotary key k_pe (64 numbers per token, shared by all heads) goes beside each head's k_nope:

    k[b, s, h, :nope]  = kv[b, s, h, :nope]        (wkv_b's output, [B, S, H, nope + v]: k_nope then v per head)
    k[b, s, h, nope:]  = k_pe[b, s, :]              (the latent cache's rotated key columns, broadcast over heads)

`torch.cat([k_nope, k_pe.expand(...)])` does the same, but its batched-copy kernel over a strided source and a
broadcast one took 108 µs a layer for DeepSeek-V2-Lite at 8,192 tokens on the H200, for ~85 MB moved (~21 µs of
bytes). Here one program takes BLOCK_T tokens x all heads: it reads each token's k_pe once and writes whole contiguous
key rows: 24 µs (scripts/bench_mla_prefill.py, docs/results/2026-12-02-s25, call 1; the graphed prefill -2.6%,
in an A/B whose sides also differed by a contiguous latent copy worth ~0.1%).
Reference: SGLang's `concat_mla_k` CUDA kernel (the same copy, for the same reason); DeepSeek-V2, arXiv 2405.04434
§2.1 (the decoupled rotary key).

Shapes: B batch, S tokens, H heads, nope/rope/v the per-head widths.
"""

import torch
import triton
import triton.language as tl

from .pdl import launch_args, wait_then_release


@triton.jit
def _mla_expand_k_kernel(kv_ptr, pe_ptr, k_ptr, T, S, stride_kvb, stride_kvs, stride_kvh, stride_peb, stride_pes,
                         H: tl.constexpr, NOPE: tl.constexpr, ROPE: tl.constexpr, BLOCK_T: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_NOPE: tl.constexpr, BLOCK_ROPE: tl.constexpr,
                         PDL: tl.constexpr):
    wait_then_release(PDL)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)                  # [BLOCK_T] flat tokens b·S + s
    t_ok = t < T
    b = (t // S).to(tl.int64)
    s = (t % S).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_NOPE)
    e = tl.arange(0, BLOCK_ROPE)
    h_ok = h < H
    kv_tok = b * stride_kvb + s * stride_kvs                                 # [BLOCK_T]
    k_tok = t.to(tl.int64) * (H * (NOPE + ROPE))                             # k is contiguous [T, H, nope + rope]
    # k_nope: [BLOCK_T, BLOCK_H, BLOCK_NOPE]
    m_nope = t_ok[:, None, None] & h_ok[None, :, None] & (d < NOPE)[None, None, :]
    src = kv_ptr + kv_tok[:, None, None] + h[None, :, None] * stride_kvh + d[None, None, :]
    dst = k_ptr + k_tok[:, None, None] + h[None, :, None] * (NOPE + ROPE) + d[None, None, :]
    tl.store(dst, tl.load(src, mask=m_nope, other=0.0), mask=m_nope)
    # k_pe: read once per token [BLOCK_T, BLOCK_ROPE], written under every head
    e_ok = e < ROPE
    pe = tl.load(pe_ptr + (b * stride_peb + s * stride_pes)[:, None] + e[None, :],
                 mask=t_ok[:, None] & e_ok[None, :], other=0.0)
    m_pe = t_ok[:, None, None] & h_ok[None, :, None] & e_ok[None, None, :]
    dst = k_ptr + k_tok[:, None, None] + h[None, :, None] * (NOPE + ROPE) + NOPE + e[None, None, :]
    tl.store(dst, tl.broadcast_to(pe[:, None, :], (BLOCK_T, BLOCK_H, BLOCK_ROPE)), mask=m_pe)


# Elements a program writes, about: BLOCK_T = this // (H_p2 · (nope + rope)_p2), at least 1. DeepSeek-V2-Lite
# (16 heads x 192): 2 tokens a program, 85% of its bytes' time at 8,192 tokens (s25 call 1); any value gives the
# same bits.
TILE_ELEMENTS = 8192


def mla_expand_k(kv: torch.Tensor, k_pe: torch.Tensor, nope: int, pdl: bool = False) -> torch.Tensor:
    """k [B, S, H, nope + rope] (contiguous, kv's dtype) = [kv[..., :nope], k_pe broadcast over heads].

    kv [B, S, H, nope + v] (wkv_b's output or a view of it: unit stride on the last dim); k_pe [B, S, rope]
    (e.g. the latent cache's last rope columns; unit last stride), same dtype as kv.
    Raises AssertionError on shape, dtype or layout mismatches."""
    B, S, H, _ = kv.shape
    rope = k_pe.shape[-1]
    assert k_pe.shape == (B, S, rope) and 0 < nope <= kv.shape[-1], (kv.shape, k_pe.shape, nope)
    assert kv.stride(-1) == 1 and k_pe.stride(-1) == 1 and kv.dtype == k_pe.dtype
    k = kv.new_empty(B, S, H, nope + rope)
    T = B * S
    if T == 0:
        return k
    block_h, block_nope, block_rope = (triton.next_power_of_2(n) for n in (H, nope, rope))
    fit = max(1, TILE_ELEMENTS // (block_h * (block_nope + block_rope)))
    block_t = min(1 << (fit.bit_length() - 1), triton.next_power_of_2(T))     # a power of 2 <= fit
    _mla_expand_k_kernel[(triton.cdiv(T, block_t),)](
        kv, k_pe, k, T, S, kv.stride(0), kv.stride(1), kv.stride(2), k_pe.stride(0), k_pe.stride(1),
        H=H, NOPE=nope, ROPE=rope, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_NOPE=block_nope, BLOCK_ROPE=block_rope,
        num_warps=4, **launch_args(pdl))
    return k
