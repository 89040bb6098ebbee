"""A static KV cache: buffers allocated once for (batch, max length), lengths kept on the device.

Why static: a decode step that writes into fixed addresses and reads a device-side length can be
captured once as a CUDA graph and replayed, with no allocation and no host sync per token
(gpt-fast's design). Why per-sequence lengths: speculative decoding accepts a different number of
tokens per sequence, so "rolling back" is just lowering a sequence's length; stale entries past it
are never read and get overwritten.

GQA layers store K and V as [B, S_max, Hkv, d] (the layout flash-attn and the Triton decode kernel
read). MLA layers (DeepSeek) store only the compressed latent [B, S_max, kv_lora_rank + rope_dim]:
that is the point of MLA, 576 values per token instead of 2*H*d = 4096 for V2-Lite.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig

COUNTER_TOKENS = 16  # new tokens per sequence the arrival counters are sized for (speculation's G + 1)
# On a GPU, a step's positions and lengths in one Triton launch (kernels/step_index.py) instead of two PyTorch ones
# (thirty-first session, docs/results/2026-12-03-s31); a step_probe knob
STEP_KERNEL = True

try:
    from .kernels.step_index import step_index as _step_index
except ImportError:       # no Triton: the PyTorch expressions
    _step_index = None


@dataclass
class Step:
    """What every attention layer needs to know about the tokens of one forward pass."""
    positions: torch.Tensor      # [B, S] int64 absolute positions of the new tokens
    seq_lens: torch.Tensor       # [B] int32 valid cache entries once this step's K/V are written
    max_len: int | None          # host-known bound on seq_lens (eager slicing); None = use S_max (graphs)
    fresh: bool                  # every sequence starts at position 0: attend within the new tokens only
    counters: torch.Tensor | None = None  # int32, zeroed: arrival counters of one-launch kernels (KVCache)
    route_acc: torch.Tensor | None = None  # int64, zeroed: the o projection + router fold's logit sums (KVCache)


class KVCache:
    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        self.batch, self.max_len, self.mla = batch, max_len, cfg.attention == "mla"
        L = cfg.n_layers
        if self.mla:
            width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
            self.latent = torch.zeros(L, batch, max_len, width, dtype=dtype, device=device)
        else:
            shape = (L, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=device)  # filled entries per sequence
        # arrival counters of the one-launch kernels that end with "the last program finishes" (the MoE
        # router with its norm folded in, kernels/gate_splitk_fold.py; decode_attention's `counters`), sized
        # for up to COUNTER_TOKENS new tokens a step; every kernel leaves them zeroed after its call
        self.counters = torch.zeros(batch * cfg.n_heads * COUNTER_TOKENS, dtype=torch.int32, device=device)
        # the fixed-point router logits of --fold-router (kernels/o_route.py), up to 2 tokens x 32 copies x 512
        # experts; zeroed, and left zeroed by the kernel's last program
        self.route_acc = torch.zeros(2 * 32 * 512, dtype=torch.int64, device=device)
        self._rows = torch.arange(batch, device=device)[:, None]             # [B, 1] for scatter writes
        # 0 .. max_len - 1 (int64): a step's positions are lengths + these, one add (a cast, an arange and an add were
        # three launches a decode step)
        self._offsets = torch.arange(max_len, device=device)

    @staticmethod
    def bytes_needed(cfg: ModelConfig, batch: int, max_len: int, dtype_bytes: int) -> int:
        return cfg.n_layers * batch * max_len * cfg.kv_bytes_per_token(dtype_bytes)

    def step(self, n_new: int, host_len: int | None, n_valid: torch.Tensor | None = None) -> Step:
        """Describe a forward of n_new tokens per sequence appended at the current lengths.

        host_len: a host-side upper bound on the lengths (eager runs slice the cache to it; 0 means
        every sequence is empty, a fresh prefill); None for the static-shape step graphs capture.
        n_valid [B] int32: how many of the n_new tokens are real per sequence (ragged prompts, right-
        padded); the padding's K/V land past the new length, where nothing ever reads them."""
        if STEP_KERNEL and _step_index is not None and self.lengths.is_cuda and (n_valid is None
                                                                                or n_valid.dtype == torch.int32):
            positions, seq_lens = _step_index(self.lengths, n_new, n_valid)  # one launch for both
        else:
            offsets = (self._offsets[:n_new] if n_new <= self.max_len
                       else torch.arange(n_new, device=self.lengths.device))
            positions = self.lengths[:, None] + offsets                      # [B, S] int64: one launch (int32 + int64)
            seq_lens = self.lengths + (n_new if n_valid is None else n_valid)
        max_len = None if host_len is None else host_len + n_new
        return Step(positions, seq_lens, max_len, fresh=host_len == 0, counters=self.counters,
                    route_acc=self.route_acc)

    def advance(self, step: Step) -> None:
        self.lengths.copy_(step.seq_lens)

    def rollback(self, lengths: torch.Tensor) -> None:
        """Forget entries past `lengths` [B] (speculative decoding rejects draft tokens this way).
        Nothing is erased: attention never reads past a sequence's length, and the next step
        overwrites those slots."""
        self.lengths.copy_(lengths)

    def reset(self) -> None:
        self.lengths.zero_()

    # -- writes (index with device tensors: no host sync, graph-safe). GQA layers write K/V inside the
    # q/k norm + rope op (ops.py), straight into `self.k[layer]` / `self.v[layer]`. --
    def write_latent(self, layer: int, step: Step, latent: torch.Tensor) -> None:
        """latent [B, S, kv_lora_rank + rope_dim]."""
        self.latent[layer][self._rows, step.positions] = latent
