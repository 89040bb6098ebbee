"""Generation: prefill a batch of equal-length prompts, then decode one token per step.

The generator owns the static KV cache. `prefill` runs the prompts through the model in one
forward (causal attention within the prompt), `decode` feeds one token per sequence. Sampling runs
on the device with no host sync: greedy is an argmax; temperature / top-k / top-p reshape the
distribution and draw with the exponential-race trick, argmax(p / Exp(1)) ~ Categorical(p), which
needs no `torch.multinomial` (gpt-fast's approach). The decode step can be captured as a CUDA graph
(graphs.py); `eager` runs are the truth the graphs are checked against.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .instrument import region
from .kv_cache import KVCache
from .model import Transformer


@dataclass
class Sampling:
    temperature: float = 0.0       # 0 = greedy
    top_k: int = 0                 # 0 = off
    top_p: float = 1.0             # 1 = off

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def check(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature >= 0, top-k >= 0 and 0 < top-p <= 1")


ARGMAX_CHUNKS = 64


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [B, V] -> [B], the first index of each row's maximum, as torch.argmax. A plain argmax
    reduces each row in one thread block (13.7 µs for V = 50304 at B = 1 on the H200, ~1% of a
    decode step); cutting the row into ARGMAX_CHUNKS chunks first spreads it over the GPU."""
    B, V = logits.shape
    if V % ARGMAX_CHUNKS or V < 64 * ARGMAX_CHUNKS:
        return logits.argmax(-1)
    vals, idx = logits.view(B, ARGMAX_CHUNKS, V // ARGMAX_CHUNKS).max(-1)   # [B, C] per-chunk max
    best = vals.argmax(-1, keepdim=True)                                     # [B, 1] first chunk with it
    return (best * (V // ARGMAX_CHUNKS) + idx.gather(1, best)).squeeze(1)


def sample(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """logits [B, V] float32 -> token ids [B] int64, on the device, no host sync."""
    if s.greedy:
        return argmax(logits)
    logits = logits / s.temperature
    if s.top_k:
        kth = logits.topk(min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]   # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if s.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > s.top_p          # mass before this token already enough
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)


class Generator:
    def __init__(self, model: Transformer, batch: int, max_len: int, sampling: Sampling | None = None):
        self.model, self.sampling = model, sampling or Sampling()
        self.sampling.check()
        p = next(model.parameters())
        self.device = p.device
        self.cache = KVCache(model.cfg, batch, max_len, model.embed.weight.dtype, p.device)
        model.setup_rope(max_len, p.device)
        self.pos = 0                                             # host copy of the (equal) lengths
        self.graphs = None                                       # graphs.DecodeGraph when enabled
        self.prefill_graphs = {}                                 # prompt length -> graphs.PrefillGraph

    @property
    def batch(self) -> int:
        return self.cache.batch

    def reset(self) -> None:
        self.cache.reset()
        self.pos = 0

    def rollback(self, lengths: torch.Tensor) -> None:
        """Forget cache entries past lengths [B] (speculative decoding's rejected tokens)."""
        self.cache.rollback(lengths)
        self.pos = int(lengths.max())      # host sync: the host bound must follow the device lengths

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, S] prompts of equal length -> first new token [B]."""
        B, S = ids.shape
        if B != self.batch:
            raise ValueError(f"prompt batch {B} != generator batch {self.batch}")
        if self.pos + S >= self.cache.max_len:
            raise ValueError(f"{S} prompt tokens do not fit a cache of {self.cache.max_len}")
        graph = self.prefill_graphs.get(S) if self.pos == 0 else None
        out = graph.run(ids) if graph is not None else self.eager_prefill(ids, self.pos)
        self.pos += S
        return out

    def eager_prefill(self, ids: torch.Tensor, host_pos: int) -> torch.Tensor:
        """ids [B, S] appended at host_pos (0: a fresh prefill, what PrefillGraph captures) -> [B]."""
        step = self.cache.step(ids.shape[1], host_pos)
        logits = self.model(ids, step, self.cache, last_only=True)         # [B, V]
        self.cache.advance(step)
        with region("sample"):
            return sample(logits, self.sampling)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] (the last sampled) -> next tokens [B]."""
        if self.pos >= self.cache.max_len:
            raise ValueError(f"the cache of {self.cache.max_len} positions is full")
        if self.graphs is not None:
            out = self.graphs.step(tokens)
        else:
            out = self.eager_step(tokens, self.pos)
        self.pos += 1
        return out

    def eager_step(self, tokens: torch.Tensor, host_len: int | None) -> torch.Tensor:
        """One decode step; host_len=None gives the static-shape step that graphs capture."""
        step = self.cache.step(1, host_len)
        logits = self.model(tokens[:, None], step, self.cache, last_only=True)
        self.cache.advance(step)
        with region("sample"):
            return sample(logits, self.sampling)

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
        """[B, S] prompts -> [B, max_new_tokens] new tokens (after eos_id, if given, only eos_id)."""
        self.reset()
        tok = self.prefill(ids)
        out = [tok]
        done = tok == eos_id if eos_id is not None else None
        for _ in range(max_new_tokens - 1):
            tok = self.decode(tok)
            if done is not None:
                tok = torch.where(done, eos_id, tok)
                done = done | (tok == eos_id)
                if bool(done.all()):          # host sync, only when stopping at EOS was asked for
                    break
            out.append(tok)
        new = torch.stack(out, dim=1)
        if eos_id is not None and new.shape[1] < max_new_tokens:
            pad = new.new_full((new.shape[0], max_new_tokens - new.shape[1]), eos_id)
            new = torch.cat([new, pad], dim=1)
        return new
