"""Held-out quality of a language model: sliding-window negative log-likelihood, perplexity, bits per byte.

A model with a context of `window` tokens cannot read a 100k-token text at once, so the text is cut
into windows. Cutting it into disjoint windows would make the first tokens of every window be
predicted from almost no context and inflate the loss; the standard remedy (the Hugging Face guide
"Perplexity of fixed-length models", https://huggingface.co/docs/transformers/perplexity) slides
the window by `stride` < `window` tokens and scores, in each window, only the tokens no earlier
window scored. Every token then has at least `window - stride` tokens of context (except near the
start), and every token except the very first is scored exactly once. Smaller stride: more
context per token, more forward passes (about n/stride windows of `window` tokens each).

Three numbers come out of the same sum of NLL (nats, natural log):
    loss = nll / tokens_scored                      nats per token
    ppl  = exp(loss)                                per token: depends on the tokenizer
    bpb  = nll / ln 2 / bytes                       bits per UTF-8 byte of the text
Bits per byte is the one to compare across tokenizers and vocabularies (Gao et al. 2020, "The Pile"):
it is the compressed size of the text under the model. `bytes` should be the UTF-8 length
of the text that the scored tokens spell; prepend a BOS/EOT token to the ids so that the first real
token is scored too and the two agree exactly.

`logits_fn(ids [B, S]) -> logits [B, S, V]` can be any model: transformers, minimoe, a quantized one.
Shape legend: B windows in a batch, S window length, V vocabulary.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) per window: tokens[start:end] go in, tokens[first_scored:end] are
    scored, each predicted from the logits one position earlier (so first_scored > start).

    The first window scores tokens 1..window-1; each later one ends `stride` tokens further and
    scores those `stride` tokens with `window - stride` tokens of context before the first of them.
    The last window ends at the text's end and keeps the full width (more context than the guide's
    short last window). A window of S tokens can score at most S - 1, hence stride < window."""
    if not 0 < stride < window:
        raise ValueError(f"need 0 < stride < window, got stride={stride} window={window}")
    if n_tokens < 2:
        return []
    end = min(window, n_tokens)
    spans = [(0, end, 1)]
    while end < n_tokens:
        first, end = end, min(end + stride, n_tokens)
        spans.append((end - window, end, first))
    return spans


@torch.no_grad()
def window_nll(logits_fn: LogitsFn, ids: torch.Tensor, spans: list[tuple[int, int, int]]) -> float:
    """Summed NLL (nats) of the scored tokens of same-length windows, run as one batch."""
    batch = torch.stack([ids[s:e] for s, e, _ in spans])                           # [B, S]
    logits = logits_fn(batch).float()                                              # [B, S, V]
    target = batch.to(logits.device)
    total = logits.new_zeros((), dtype=torch.float64)
    for row, (start, end, first) in enumerate(spans):
        pred = logits[row, first - start - 1:end - start - 1]                     # [scored, V]
        total += F.cross_entropy(pred, target[row, first - start:], reduction="sum").double()
    return total.item()                                   # one host sync per batch


def bits_per_byte(logits_fn: LogitsFn, ids: torch.Tensor, text_bytes: int, window: int, stride: int,
                  batch_size: int = 16, desc: str = "eval", before_batch=None) -> dict:
    """Sliding-window NLL of `ids` (1-D LongTensor) -> dict(nll_nats, tokens_scored, bytes, bpb, ppl, loss).

    Windows of equal length are batched `batch_size` at a time in a fixed order, so the result is
    deterministic whenever `logits_fn` is. `text_bytes` is the UTF-8 length of the scored text.
    before_batch: optional callable(spans) run before each batch's forward with its (start, end, first_scored)
    windows, in order (eval's expert-load counter uses it to count each token once)."""
    ids = ids.reshape(-1).long()
    spans = sliding_windows(ids.numel(), window, stride)
    # every window has length min(window, n): batches of consecutive windows, in a fixed order
    batches = [spans[i:i + batch_size] for i in range(0, len(spans), batch_size)]
    nll = 0.0
    for chunk in tqdm(batches, desc=desc, unit="batch", leave=False):
        if before_batch is not None:
            before_batch(chunk)
        nll += window_nll(logits_fn, ids, chunk)
    scored = sum(end - first for _, end, first in spans)
    loss = nll / max(scored, 1)
    return dict(nll_nats=nll, tokens_scored=scored, bytes=text_bytes, loss=loss,
                ppl=math.exp(loss), bpb=nll / math.log(2) / text_bytes, window=window, stride=stride)


def load_heldout(path) -> str:
    """The held-out text, decoded exactly as stored (UTF-8, newlines untouched)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8")
