"""bitsandbytes' formats (nf4, LLM.int8) on every weight of an MoE, the 3-D experts included.

bitsandbytes quantizes `nn.Linear` modules (Linear4bit, Linear8bitLt). MoE checkpoints in
transformers v5 keep experts as fused 3-D parameters, which those layers never see, so the experts
silently stay bf16 and the model barely shrinks (bitsandbytes#1849; the same blind spot hit
ModelOpt, Model-Optimizer#1173). Here each expert matrix is quantized on its own with the library's
own functions, and the bytes are stored exactly as the library lays them out:

    nf4       `quantize_4bit(blocksize=64, quant_type="nf4", compress_statistics=False)`: two 4-bit
              indices into the 16-value NF4 codebook a byte (the first in the high nibble), one fp32
              absmax per 64 weights. W ≈ codebook[u] · absmax.                        4.5 bits a weight
    bnb-int8  `int8_vectorwise_quant` (LLM.int8 with threshold 0: no fp16 outlier columns): signed
              int8 codes, one fp32 absmax per row. W ≈ q · absmax / 127.              8 + 32/K bits

Who computes with them: dense layers call the library's own matmuls (`matmul_4bit`, whose one-row
case is its GEMV kernel; `matmul` with a MatmulLtState, which also quantizes activations to int8).
Experts on the `loop` path dequantize one expert with the library (`dequantize_4bit`,
`int8_vectorwise_dequant`), the oracle; on the `fused` path minimoe's quantized kernels read the same
bytes in place (kernels/quant_tiles.unpack_codes: CODES 1 looks the nibble up in the codebook,
CODES 2 reads signed bytes), with activations in the compute dtype.
A K that is not a multiple of 64 (nf4) or 4 (int8) is padded with zero weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .qexperts import QuantExperts
from .qweights import QuantMatrix, QuantWeight

NF4_BLOCK = 64


def _lib():
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_f
    except ImportError as e:
        raise ImportError("--quant nf4 / bnb-int8 need bitsandbytes: pip install 'minimoe[bnb]'") from e
    return bitsandbytes, bnb_f


class BnbMatrix(QuantMatrix):
    """E matrices in bitsandbytes' storage (see the module docstring), readable by the kernels."""

    def _state(self, e: int, dtype: torch.dtype):
        """(the library's 2-D weight operand, its QuantState or MatmulLtState) for matrix e."""
        bnb, bnb_f = _lib()
        q, s = self.data3[e], self.scale3[e]
        N, Kp = q.shape[0], q.shape[1] * (32 // self.bits)
        if self.codes == 1:
            state = bnb_f.QuantState(absmax=s.reshape(-1), shape=torch.Size((N, Kp)), code=self.codebook,
                                     blocksize=NF4_BLOCK, quant_type="nf4", dtype=dtype)
            return q.view(torch.uint8).reshape(-1, 1), state
        cb = q.view(torch.int8)                                                         # [N, Kp]
        state = bnb.MatmulLtState()
        state.CB, state.SCB, state.threshold, state.has_fp16_weights = cb, s.reshape(-1) * 127.0, 0.0, False
        return cb, state

    def dequantize(self, dtype: torch.dtype | None = None, experts=None) -> torch.Tensor:
        _, bnb_f = _lib()
        dtype = dtype or self.compute_dtype
        E = self.data3.shape[0]
        chosen = range(E)[experts] if isinstance(experts, slice) else (
            [experts] if experts is not None else range(E))
        out = []
        for e in chosen:
            q, state = self._state(e, dtype)
            if self.codes == 1:
                w = bnb_f.dequantize_4bit(q, state)
            else:
                w = bnb_f.int8_vectorwise_dequant(q, state.SCB)
            out.append(w[:, :self.K].to(dtype))
        return torch.stack(out)


class BnbWeight(BnbMatrix, QuantWeight):
    """A dense layer in bitsandbytes' storage; `linear` runs the library's own matmul."""

    def dequantize(self, dtype: torch.dtype | None = None, experts=None) -> torch.Tensor:
        return BnbMatrix.dequantize(self, dtype)[0]

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
        bnb, _ = _lib()                              # pdl: bitsandbytes' kernels run in stream order
        Kp = self.qdata.shape[1] * (32 // self.bits)
        xp = F.pad(x, (0, Kp - self.K)) if Kp != self.K else x
        q, state = self._state(0, x.dtype)
        if self.codes == 1:
            return bnb.matmul_4bit(xp, q.t(), quant_state=state, bias=bias)
        if xp.is_cuda and xp.dtype != torch.float16:   # LLM.int8's CUDA kernels take fp16 activations only
            xp, bias = xp.half(), None if bias is None else bias.half()
        return bnb.matmul(xp, q, state=state, bias=bias).to(x.dtype)


def _meta_like(w3: torch.Tensor, Kp: int, bits: int, groups: int):
    E, N, _ = w3.shape
    return (torch.empty(E, N, Kp * bits // 32, dtype=torch.int32, device="meta"),
            torch.empty(E, N, groups, dtype=torch.float32, device="meta"))


def quantize_nf4(w: torch.Tensor, cls=BnbMatrix) -> BnbMatrix:
    """w [E, N, K] or [N, K] -> nf4 through bitsandbytes, each [N, K] matrix on its own."""
    dense, w3 = w.dim() == 2, (w if w.dim() == 3 else w[None])
    E, N, K = w3.shape
    Kp = K + (-K % NF4_BLOCK)
    if w3.is_meta:
        words, absmax = _meta_like(w3, Kp, 4, Kp // NF4_BLOCK)
        code = torch.empty(16, device="meta")
    else:
        _, bnb_f = _lib()
        words, absmax = [], []
        for e in range(E):
            q, state = bnb_f.quantize_4bit(F.pad(w3[e], (0, Kp - K)).contiguous(), blocksize=NF4_BLOCK,
                                           quant_type="nf4", compress_statistics=False)
            words.append(q.view(N, Kp // 2).view(torch.int32))                          # [N, Kp/8]
            absmax.append(state.absmax.view(N, Kp // NF4_BLOCK).float())
        words, absmax, code = torch.stack(words), torch.stack(absmax), state.code.float()
    m = cls(words[0] if dense else words, absmax[0] if dense else absmax, None, K, 4, NF4_BLOCK)
    m.codes, m.codebook = 1, code
    return m


def quantize_bnb_int8(w: torch.Tensor, cls=BnbMatrix) -> BnbMatrix:
    """w [E, N, K] or [N, K] -> LLM.int8 vector-wise codes through bitsandbytes (threshold 0)."""
    dense, w3 = w.dim() == 2, (w if w.dim() == 3 else w[None])
    E, N, K = w3.shape
    Kp = K + (-K % 4)
    if w3.is_meta:
        words, scale = _meta_like(w3, Kp, 8, 1)
    else:
        _, bnb_f = _lib()
        words, scale = [], []
        for e in range(E):
            src = F.pad(w3[e], (0, Kp - K)).contiguous()
            if src.is_cuda and src.dtype != torch.float16:    # its CUDA kernel takes fp16 only (exact for
                src = src.half()                              # bf16 weights' range; codes are per-row absmax)
            cb, scb, _ = bnb_f.int8_vectorwise_quant(src)
            words.append(cb.view(torch.int32))                                          # [N, Kp/4]
            scale.append((scb.float() / 127.0).view(N, 1))
        words, scale = torch.stack(words), torch.stack(scale)
    m = cls(words[0] if dense else words, scale[0] if dense else scale, None, K, 8, 0)
    m.codes = 2
    return m


class BnbExperts(QuantExperts):
    """Experts in bitsandbytes' storage: `loop` dequantizes with the library, `fused` reads the bytes in
    minimoe's quantized kernels (QuantExperts.fused)."""

    @property
    def fmt(self) -> str:
        return "nf4 (bitsandbytes)" if self.w13.codes == 1 else "LLM.int8 (bitsandbytes)"
