"""Generation over a static KV cache: append tokens, prefill (ragged) prompts, decode, roll back.

The generator owns the static KV cache (kv_cache.py), whose per-sequence lengths live on the device.
Everything is built on one multi-token step:

    append(tokens [B, S], n_valid [B]) -> logits [B, S, V]

which writes the new tokens' K/V at each sequence's own length, attends to everything before them,
and advances each length by its n_valid. A prefill is an append into an empty cache (prompts of
different lengths are right-padded: causal attention never lets a real token see the padding after
it, and the padding's K/V land past the sequence's length, where nothing reads them); a decode step
is an append of one token; speculative verification is an append of gamma+1 tokens followed by a
`rollback` of each sequence to what it accepted. No host sync is needed for any of them: the host
keeps only an upper bound on the lengths (`host_len`), which eager runs use to slice the cache.

Sampling (sampling.py) runs on the device: `probs()` shapes the distribution, `draw()` picks a token.
The decode step and the prefill of a given length can be captured as CUDA graphs (graphs.py);
eager runs are the truth the graphs are checked against.
"""
from __future__ import annotations

import torch

from .instrument import region
from .kv_cache import KVCache
from .model import Transformer
from .ops import nonfinite_rows, ops_for
from .sampling import Sampling, sample


def pad_prompts(prompts, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A [B, S] tensor or a list of B token lists -> (ids [B, S_max] right-padded with 0, n_valid [B] int32)."""
    if isinstance(prompts, torch.Tensor):
        B, S = prompts.shape
        return prompts.to(device), torch.full((B,), S, dtype=torch.int32, device=device)
    lengths = [len(p) for p in prompts]
    if not prompts or min(lengths) < 1:
        raise ValueError("every prompt needs at least one token")
    ids = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.as_tensor(p, dtype=torch.long)
    return ids.to(device), torch.tensor(lengths, dtype=torch.int32, device=device)


def stop_tensor(stop_ids, max_new_tokens: int, device) -> torch.Tensor:
    """The stop ids (an int or an iterable of ints) as a sorted int64 tensor [S], after checking that at least one
    new token is asked for (ValueError otherwise): the checks every generate() runs before its prefill."""
    if isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    ids = (stop_ids,) if isinstance(stop_ids, int) else stop_ids
    return torch.tensor(sorted(set(ids)), dtype=torch.long, device=device)


# generate() asks whether every row has stopped once per this many steps (an int >= 1; one host sync each time): a
# batch whose rows have all stopped runs at most STOP_CHECK_EVERY - 1 steps more. With stop ids, the old loop's sync
# every step cost 7.44% of OLMoE's bs-1 generation against bench.py's loop; this loop costs 0.68% (H200, thirty-eighth
# session, scripts/generate_loop_probe.py).
STOP_CHECK_EVERY = 16
# Greedy steps (prefill and decode) hand the argmax the LM head's bf16 / fp16 logits instead of a float32 copy. The
# values are the same (the cast is exact), so are the tokens and the non-finite counts. What it saves, where the head
# is a cuBLAS GEMM (on a GPU at batch > 2): the [B, V] copy's launch, and half of the bytes the argmax reads. (At batch
# 1-2 on a GPU the stream GEMV writes float32 itself, so there was no copy to save.)
# In the graphed step (H200, docs/results/2026-12-04-s39, call 3; every variant's tokens the baseline's): OLMoE bs 64
# -0.44%, bs 16 -0.08%, bs 1 -0.07%; Qwen3-30B-A3B bs 64 (a 152k vocabulary) -0.27%. On; read when a step runs (a graph
# keeps what it captured).
GREEDY_RAW_LOGITS = True


def mask_after_stop(new: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """new [B, N] tokens, stop [S] ids -> new with every entry after a row's first stop id set to the smallest stop id
    (the stop token itself kept); new unchanged when stop is empty."""
    if stop.numel() == 0:
        return new
    hit = torch.isin(new, stop).int()
    after = (hit.cumsum(1) - hit) > 0                                    # [B, N] past the row's first stop
    return torch.where(after, stop[0], new)


class Generator:
    def __init__(self, model: Transformer, batch: int, max_len: int, sampling: Sampling | None = None):
        self.model, self.sampling = model, sampling or Sampling()
        self.sampling.check()
        p = model.embed.weight
        self.device = p.device
        self.cache = KVCache(model.cfg, batch, max_len, p.dtype, p.device)
        model.setup_rope(max_len, p.device)
        self.host_len = 0                                        # upper bound of the device lengths
        self.graphs = None                                       # graphs.DecodeGraph when enabled
        self.prefill_graphs = {}                                 # padded prompt length -> graphs.PrefillGraph
        self.generator = None                                    # torch.Generator for sampling (optional)
        # rows of logits with a NaN/inf seen since reset(), counted on the device (no sync): argmax would
        # silently turn them into token 0, so runs report this count (fp16 overflow in deep MoEs)
        self.nonfinite = torch.zeros((), dtype=torch.long, device=self.device)
        # arrival counters of the one-launch greedy tail (kernels/greedy.py ONE_LAUNCH), zeroed and left zeroed
        self.argmax_counters = torch.zeros(batch, dtype=torch.int32, device=self.device)

    @property
    def batch(self) -> int:
        return self.cache.batch

    def reset(self) -> None:
        self.cache.reset()
        self.host_len = 0
        self.nonfinite.zero_()

    def _sample(self, logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B, V] float32 (or the model's dtype for greedy, `_raw_logits`) -> tokens [B] (written into `out`
        when given); counts non-finite rows on the device."""
        with region("sample"):
            if self.sampling.greedy:          # argmax + the count in two kernels with --ops triton
                return ops_for(self.model.settings).greedy(logits, self.nonfinite, counters=self.argmax_counters,
                                                           out=out)
            self.nonfinite += nonfinite_rows(logits)
            tokens = sample(logits, self.sampling, self.generator)
            return tokens if out is None else out.copy_(tokens)

    def _room(self, n_new: int) -> None:
        if self.host_len + n_new > self.cache.max_len:
            raise ValueError(f"{n_new} more tokens do not fit the cache of {self.cache.max_len} positions "
                             f"({self.host_len} may be filled)")

    # ---- the multi-token step -------------------------------------------------------------------
    def forward_step(self, tokens: torch.Tensor, host_len: int | None, n_valid: torch.Tensor | None = None,
                     select=None, float_logits: bool = True) -> torch.Tensor:
        """tokens [B, S] at the current lengths -> logits (see Transformer.forward's `select` and `float_logits`);
        advances the lengths. host_len None: the static-shape step that graphs capture."""
        step = self.cache.step(tokens.shape[1], host_len, n_valid)
        logits = self.model(tokens, step, self.cache, select=select, float_logits=float_logits)
        self.cache.advance(step)
        return logits

    @torch.inference_mode()
    def append(self, tokens: torch.Tensor, n_valid: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, S] (n_valid [B] real ones per row, default all) -> float32 logits [B, S, V]."""
        if tokens.shape[0] != self.batch:
            raise ValueError(f"batch {tokens.shape[0]} != generator batch {self.batch}")
        self._room(tokens.shape[1])
        logits = self.forward_step(tokens, self.host_len, n_valid)
        self.host_len += tokens.shape[1]
        return logits

    def rollback(self, lengths: torch.Tensor) -> None:
        """Forget cache entries past lengths [B] (device tensor, no host sync): rejected draft tokens.
        The host bound stays an upper bound, which is all eager slicing needs."""
        self.cache.rollback(lengths)

    # ---- prefill and decode ---------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts) -> torch.Tensor:
        """Prompts ([B, S] tensor, or B token lists of any lengths) into an empty cache -> first tokens [B]."""
        ids, n_valid = pad_prompts(prompts, self.device)
        if ids.shape[0] != self.batch:
            raise ValueError(f"prompt batch {ids.shape[0]} != generator batch {self.batch}")
        if self.host_len != 0:
            raise ValueError("prefill needs an empty cache: call reset() first (or append())")
        self._room(ids.shape[1])
        graph = self.prefill_graphs.get(ids.shape[1])
        out = graph.run(ids, n_valid) if graph is not None else self.eager_prefill(ids, n_valid)
        self.host_len = ids.shape[1]
        return out

    def eager_prefill(self, ids: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
        """ids [B, S] right-padded, n_valid [B] -> the token sampled after each prompt's last real one."""
        logits = self.forward_step(ids, 0, n_valid, select=n_valid.long() - 1,
                                   float_logits=not self._raw_logits())                      # [B, V]
        return self._sample(logits)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, own: bool = True) -> torch.Tensor:
        """tokens [B] (the last sampled) -> next tokens [B]. own=False, with a captured decode graph: the
        returned tensor is the graph's own token buffer, overwritten by the next decode (a list of such returns
        would hold one tensor, the latest); passing it straight back as `tokens` (a timed loop) skips the input
        copy and the output clone, two launches a step (graphs.DecodeGraph). generate() and bench.py's loop do so
        (generate() copies each step's tokens into its own buffer). Keep a token across steps with own=True (the
        default). Without graphs (eager, CPU) every return is a new tensor and own changes nothing."""
        self._room(1)
        if self.graphs is not None:
            out = self.graphs.step(tokens, own=own)
        else:
            out = self.eager_step(tokens, self.host_len)
        self.host_len += 1
        return out

    def eager_step(self, tokens: torch.Tensor, host_len: int | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step; host_len=None gives the static-shape step that graphs capture. out: [B] int64 to
        write the next tokens into (may be `tokens` itself: read at the step's start, written at its end)."""
        logits = self.forward_step(tokens[:, None], host_len, select=-1, float_logits=not self._raw_logits())
        return self._sample(logits, out)                                                  # logits [B, V]

    def _raw_logits(self) -> bool:
        """Whether a step hands the sampler the LM head's own dtype (GREEDY_RAW_LOGITS and greedy sampling)."""
        return GREEDY_RAW_LOGITS and self.sampling.greedy

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens: int, stop_ids=()) -> torch.Tensor:
        """Prompts -> [B, max_new_tokens] new tokens. Each sequence stops on its own at any id in `stop_ids` (an int
        or an iterable of ints): its row keeps that stop id, and every position after it is padding, filled with the
        smallest stop id (cut a row after its first stop id to get what it generated). Raises ValueError for
        max_new_tokens < 1, and for a module-level STOP_CHECK_EVERY below 1.

        The loop never waits on the GPU between steps. Each step's tokens go into a [B, max_new_tokens] buffer on the
        device (one copy a step, graphs.DecodeGraph.record; with a decode graph the step's own buffer is fed back, no
        copy in). A row that has stopped keeps decoding and is masked at the end (rows do not interact, so the
        others' tokens are the same). Whether every row has stopped is asked every minimoe.generate.STOP_CHECK_EVERY
        steps (a host sync each time), so a batch that has stopped runs at most STOP_CHECK_EVERY - 1 steps more:
        lower values stop sooner, at one host sync per check."""
        stop = stop_tensor(stop_ids, max_new_tokens, self.device)
        every = STOP_CHECK_EVERY
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"minimoe.generate.STOP_CHECK_EVERY must be an int >= 1, not {every!r}")
        self.reset()
        tok = self.prefill(prompts)
        new = torch.empty(tok.shape[0], max_new_tokens, dtype=tok.dtype, device=tok.device)   # [B, N]
        new[:, 0] = tok
        plan = getattr(self.model, "plan", None)         # under --ep the ranks decide together (parallel.py)
        for i in range(1, max_new_tokens):
            if stop.numel() and i % every == 0 and self._all_stopped(new[:, :i], stop, plan):
                new[:, i:] = 0                            # masked below: every row has stopped before column i
                break
            tok = self.decode(tok, own=False)
            if self.graphs is not None:
                self.graphs.record(new[:, i])             # the copy, then the PDL mark (graphs.DecodeGraph.record)
            else:
                new[:, i] = tok
        return mask_after_stop(new, stop)

    @staticmethod
    def _all_stopped(new: torch.Tensor, stop: torch.Tensor, plan) -> bool:
        """Has every row of new [B, i] met a stop id (on every rank of a parallel plan)? One host sync."""
        done = bool(torch.isin(new, stop).any(1).all())
        return done if plan is None else plan.all_ranks(done)
