"""Benchmark prompts: random token ids, of one length or of lengths drawn from a distribution.

Serving engines see ragged batches: prompts of different lengths prefilled together. `--input-len-dist`
describes the lengths:
    uniform:LO-HI    each sequence's length drawn uniformly from [LO, HI] (seeded)
    file:PATH        lengths read from a file, one per line, cycled over the batch
Ids are uniform over the vocabulary, seeded, and the same for every run of a configuration, so a
minimoe run and its transformers peer see the same prompts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LengthSampler:
    spec: str
    lengths: tuple          # the file's lengths, or (LO, HI) for uniform

    @property
    def longest(self) -> int:
        return max(self.lengths)

    def draw(self, batch: int, gen: torch.Generator) -> list[int]:
        if self.spec.startswith("uniform:"):
            lo, hi = self.lengths
            return torch.randint(lo, hi + 1, (batch,), generator=gen).tolist()
        return [self.lengths[i % len(self.lengths)] for i in range(batch)]


def length_sampler(spec: str) -> LengthSampler:
    """Parse --input-len-dist. ValueError (one sentence) on a malformed spec."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "uniform":
            lo, hi = (int(x) for x in arg.split("-"))
            if not 1 <= lo <= hi:
                raise ValueError
            return LengthSampler(spec, (lo, hi))
        if kind == "file":
            if not os.path.isfile(arg):
                raise FileNotFoundError
            with open(arg) as f:
                lengths = tuple(int(line) for line in f if line.strip())
            if not lengths or min(lengths) < 1:
                raise ValueError
            return LengthSampler(spec, lengths)
    except FileNotFoundError:
        raise ValueError(f"--input-len-dist {spec}: no such file {arg}") from None
    except (ValueError, OSError):
        pass
    raise ValueError(f"--input-len-dist {spec}: use uniform:LO-HI (1 <= LO <= HI) or file:PATH with one "
                     "positive length per line")


def make_prompts(vocab: int, batch: int, input_len, seed: int) -> list[list[int]]:
    """batch prompts of random ids: each input_len long (an int), or of lengths from a --input-len-dist spec."""
    gen = torch.Generator().manual_seed(seed)
    lengths = length_sampler(input_len).draw(batch, gen) if isinstance(input_len, str) else [input_len] * batch
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
