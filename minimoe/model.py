"""The decoder stack, wired from a `ModelConfig`.

    ids [B, S] -> embed -> L x (h = norm(x + r); x = Attn(h); h = norm(x + r); x = FFN(h)) -> norm -> lm_head

Every family is pre-norm with RMSNorm; what differs (GQA vs MLA attention, MoE vs dense FFN per
layer, shared experts, tied embeddings) is decided once, here, from config fields. The residual
stream r travels beside the sublayer outputs and is added inside the next norm (one fused kernel
with --ops triton). The KV cache is owned by the caller (generate.py) and handed down with a `Step`
describing the new tokens. Every sublayer is a module called through `nn.Module.__call__`, so
forward hooks (parallel plans, calibration, tests) see every path; the exceptions are the batch-1 folds. One is the MoE
layer's RMSNorm when `--fold-norm` runs it inside the router's kernel (a one-token step): then the
Router is called with the un-normed x and the norm (gate.py), and `ffn_norm` itself is not called. With
`--fold-router` (router_fusion.py) the attention's o projection, that norm and the router are one kernel: the
attention module's `heads` runs, and neither its `wo` nor `ffn_norm` is called (only where nothing is hooked on them).
With `--fold-attn-norm` (norm_fusion.py) `attn_norm` runs inside the q/k/v GEMV: the attention gets the q/k/v rows
(its `qkv` argument) and neither `attn_norm` nor `wqkv` is called. With the o projection split over K (o_splitk.py,
MODE) the attention's `heads` runs, then the split GEMM and the norm that sums its partials: neither `wo` nor `ffn_norm`
is called (only where nothing is hooked on them).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import Attention
from .config import ModelConfig
from .instrument import region
from .kv_cache import KVCache, Step
from .layers import ResidualRMSNorm
from .linear import Linear
from .mla import MLAttention
from . import norm_fusion, o_splitk, rope, rope_attn_fusion, rope_fusion, router_fusion
from .moe import MoE, make_ffn
from .rope import Rotary, rope_tables


class Block(nn.Module):
    """One pre-norm layer: (x, residual) -> (FFN output, residual), the last add left to the next norm."""

    def __init__(self, cfg: ModelConfig, settings, layer: int):
        super().__init__()
        self.attn_norm = ResidualRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, settings)
        self.attn = (MLAttention if cfg.attention == "mla" else Attention)(cfg, settings, layer)
        self.ffn_norm = ResidualRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, settings)
        self.ffn = make_ffn(cfg, settings, layer)
        self.ffn_region = None if isinstance(self.ffn, MoE) else "dense"   # an MoE opens its own regions

    def forward(self, x, residual, step: Step, cache: KVCache, rot: Rotary, gather=None):
        """x [B, S, D] (the previous sublayer's output, not yet added to residual) -> (y, residual).
        gather (ids, table), x None: the first layer's input is table[ids], read inside the norm fold
        (norm_fusion.embed_fits said it fits)."""
        made = {}                          # the q/k/v rows (or q rotated, K/V cached), where the norm fold made them
        if gather is not None:                              # the embedding, the norm and q/k/v in one launch
            with region("attention"):
                made, residual = norm_fusion.run(self, None, None, step, gather=gather)
            h = residual                                      # the embedding rows: the shape for the attention
        elif norm_fusion.fits(self, x, residual, step, cache):   # --fold-attn-norm: the norm inside the q/k/v GEMV
            with region("attention"):
                made, residual = norm_fusion.run(self, x, residual, step, cache, rot)
            h = x                                             # gives the attention its shape only
        else:
            with region("norm"):
                h, residual = self.attn_norm(x, residual)
        if router_fusion.fits(self, h, residual, step):     # --fold-router: the router in the o projection's epilogue
            with region("attention"):
                a = self.attn.heads(h, step, cache, rot, **made)
            with region("router"):
                h, residual, routing = router_fusion.run(self, a, residual, step)
            return self.ffn(h, routing=routing), residual
        if o_splitk.fits(self, h, residual):               # the o projection over K slices, summed in the norm
            with region("attention"):
                parts = o_splitk.partials(self.attn.wo, self.attn.heads(h, step, cache, rot, **made))
            with region("norm"):
                h, residual = o_splitk.norm(self, parts, residual)
            with region(self.ffn_region):
                return self.ffn(h), residual
        with region("attention"):
            x = self.attn(h, step, cache, rot, **made)
        if self.ffn_region is None and self.ffn.fold_fits(x, residual):
            with region("router"):      # norm + router in one kernel where that exists (--fold-norm)
                h, residual, routing = self.ffn.fold_norm(x, residual, self.ffn_norm, step.counters)
            return self.ffn(h, routing=routing), residual
        with region("norm"):
            h, residual = self.ffn_norm(x, residual)
        with region(self.ffn_region):
            return self.ffn(h), residual


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, settings=None):
        super().__init__()
        self.cfg, self.settings = cfg, settings
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, settings, i) for i in range(cfg.n_layers))
        self.norm = ResidualRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, settings)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, settings=settings)
        if cfg.tie_word_embeddings:       # one Parameter, two modules: the head is still a module to hook
            self.lm_head.weight = self.embed.weight
        self.rope_len = 0

    def _apply(self, fn, recurse=True):
        """.to(), .float(), .to_empty() re-create parameters one module at a time: re-tie the head."""
        super()._apply(fn, recurse)
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        return self

    def setup_rope(self, max_len: int, device) -> None:
        """cos/sin tables [max_len, rope_dim/2] (float32), built once per cache size."""
        if max_len > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence length {max_len} exceeds the model's max_position_embeddings "
                             f"{self.cfg.max_position_embeddings}")
        if self.cfg.sliding_window and max_len > self.cfg.sliding_window:
            raise ValueError(f"sequence length {max_len} exceeds the sliding window {self.cfg.sliding_window}, "
                             "which minimoe does not implement")
        if max_len > self.rope_len:
            cos, sin = rope_tables(self.cfg, max_len)
            self.cos, self.sin = cos.to(device), sin.to(device)
            self.cos_sin = torch.cat([self.cos, self.sin], dim=-1)            # [P, rope_dim]: one gather a step
            self.rope_len = max_len

    def _rope_kernel_reads_rows(self, step: Step) -> bool:
        """Whether to gather this step's rope rows (rope.STEP_ROWS): only where attention.py's q/k norm + rope kernel
        may read them. Not for MLA (mla_rope.py reads the tables), nor where every layer takes --fuse-rope's GEMV
        (rope_fusion.py's settings and config conditions; a layer that still falls back reads the tables) or
        --fuse-rope-attn's kernel: a gather nobody reads would only add a launch."""
        cfg, s = self.cfg, self.settings
        if not rope.STEP_ROWS or cfg.attention == "mla":
            return False
        if s is None:
            return True
        fused_rope = (getattr(s, "fuse_rope", "off") == "on" and step.positions.numel() <= rope_fusion.MAX_T
                      and cfg.qk_norm is None and cfg.clip_qkv is None)
        rope_attn = (not step.fresh and step.positions.shape[1] == 1 and getattr(s, "attn", None) == "triton"
                     and (getattr(s, "fuse_rope_attn", "off") == "on"
                          or (getattr(s, "fuse_rope_attn", "off") == "auto" and rope_attn_fusion.AUTO)))
        return not (fused_rope or rope_attn)

    def forward(self, ids: torch.Tensor, step: Step, cache: KVCache, select=None,
                float_logits: bool = True) -> torch.Tensor:
        """ids [B, S] -> float32 logits [B, S, V]; or [B, V] at one position per sequence when
        `select` is an int (the same for every row, e.g. -1) or a LongTensor [B] (ragged prompts).
        float_logits False: the LM head's own dtype where it would otherwise add a copy to float32 (the values are
        the same: a bf16 / fp16 -> fp32 cast is exact; for an argmax, generate.GREEDY_RAW_LOGITS)."""
        gather = norm_fusion.embed_fits(self, ids, step, cache)   # the rows read by the first layer's fold instead
        with region("embed"):
            x = None if gather else self.embed(ids)                            # [B, S, D]
            rows = None
            if self._rope_kernel_reads_rows(step):                             # this step's (cos | sin) rows
                rows = self.cos_sin[step.positions.reshape(-1)]                # [B·S, rope_dim], one launch
            rot = Rotary(self.cos, self.sin, rows)                             # the tables [P, rope/2]
        residual = None
        for i, layer in enumerate(self.layers):
            if gather and i == 0:
                x, residual = layer(None, None, step, cache, rot, gather=(ids, self.embed.weight))
            else:
                x, residual = layer(x, residual, step, cache, rot)
        if select is not None:            # only where a token will be sampled: [B, 1, D]
            if isinstance(select, int):
                x, residual = x[:, select:][:, :1], residual[:, select:][:, :1]
            else:
                rows = torch.arange(x.shape[0], device=x.device)
                x, residual = x[rows, select][:, None], residual[rows, select][:, None]
        if norm_fusion.head_fits(self, x, residual):       # --fold-attn-norm: the norm inside the head's GEMV
            with region("lm_head"):
                logits = norm_fusion.run_head(self, x, residual)
        else:
            with region("norm"):
                x, _ = self.norm(x.contiguous(), residual.contiguous())
            with region("lm_head"):
                # self.lm_head(x).float(), one copy launch fewer; or no copy at all
                logits = self.lm_head.forward_float(x) if float_logits else self.lm_head(x)
        return logits[:, 0] if select is not None else logits
