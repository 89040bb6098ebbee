"""One step of the online softmax (Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018): the tile
fold shared by the split decode attention's plain loop (kernels/decode_attention.py) and its rope-prologue loop
(kernels/attn_rope.py). Shapes: BLOCK_H query rows, BLOCK_N cache positions, Dv value dim."""

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(qk, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """Fold one [BLOCK_H, BLOCK_N] score tile into the running (max, sum, output), log2 domain.

    Milakov & Gimelshein's online softmax: rescale what we have by exp2(m_old - m_new), add the
    tile. A row with no valid position yet (a later query token's causal limit lies past this
    split's start only for some rows) keeps max -inf: it is shifted by 0 instead, so it adds
    exp2(-inf) = 0 and never produces inf - inf.
    """
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(qk - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc
