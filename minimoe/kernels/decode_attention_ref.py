"""The plain PyTorch oracle of decode_attention.py: softmax(scale * q K^T) V one sequence and query token at a time.

Shapes: B batch, S new tokens a sequence, H query heads, Hkv kv heads (G = H / Hkv share one), Dk / Dv head dims.
"""

import torch


def decode_attention_ref(q, k_cache, v_cache, seq_lens, scale: float, positions=None) -> torch.Tensor:
    """Plain PyTorch oracle: one sequence (and query token) at a time, in at least fp32 (float64 stays
    float64). q [B, H, Dk], or [B, S, H, Dk] with positions [B, S] (token s sees <= positions[b, s])."""
    one = q.dim() == 3
    q4 = q[:, None] if one else q
    B, S, H, _ = q4.shape
    G = H // k_cache.shape[2]
    acc_t = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty(B, S, H, v_cache.shape[-1], device=q.device, dtype=q.dtype)
    lens = seq_lens.tolist()  # host sync: fine for an oracle, not for decode
    for b in range(B):
        for s in range(S):
            n = lens[b] if one else min(lens[b], int(positions[b, s]) + 1)
            k = k_cache[b, :n].to(acc_t).repeat_interleave(G, dim=1)  # [n, H, Dk]
            v = v_cache[b, :n].to(acc_t).repeat_interleave(G, dim=1)  # [n, H, Dv]
            scores = torch.einsum("hd,shd->hs", q4[b, s].to(acc_t), k) * scale  # [H, n]
            out[b, s] = torch.einsum("hs,shd->hd", scores.softmax(dim=-1), v).to(q.dtype)
    return out[:, 0] if one else out
