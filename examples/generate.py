"""Load a model through the Python API, generate, and flip one optimization.

Seeded: the same command prints the same tokens every run (a card's random prompts and the sampled line come
from torch's global generator; a checkpoint with a tokenizer gets two fixed text prompts; a Generator also takes
its own: `gen.generator = torch.Generator().manual_seed(n)`).

    python examples/generate.py                      # tiny card, random weights, CPU
    python examples/generate.py --model olmoe-stdlib         # a trained model: text prompts, text out
    python examples/generate.py --model /path/to/OLMoE-1B-7B-0924 --device cuda
"""
import argparse

import torch

from minimoe.cli import load_tokenizer
from minimoe.generate import Generator
from minimoe.loader import build_model
from minimoe.sampling import Sampling
from minimoe.settings import RunSettings, pick_device

p = argparse.ArgumentParser()
p.add_argument("--model", default="olmoe-tiny", help="card name, checkpoint dir or hub id")
p.add_argument("--device", default="cpu")
p.add_argument("--seed", type=int, default=0, help="random prompts (cards), random weights and sampling (default 0)")
args = p.parse_args()
torch.manual_seed(args.seed)

settings = RunSettings(device=args.device)                  # the plain path: loop over experts, SDPA
dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
try:
    pick_device(args.device)                                # a bad --device in one line, before building
    model, cfg, folder = build_model(args.model, "auto", dtype=dtype, device=args.device, settings=settings,
                                     seed=args.seed)
except (ValueError, MemoryError) as e:      # a bad --model or --device (CheckpointError, ...), or too big: one line
    raise SystemExit(f"error: {e}")
tok = load_tokenizer(folder)                                # the checkpoint's own tokenizer, or None (a card)
if tok is not None:        # text in, text out. A tokenizer that adds no BOS (the stdlib models') gets its
    adds_bos = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
    start = "" if adds_bos else (tok.eos_token or "")      # end-of-text first, so the prompt opens a document
    prompts = [tok(start + text)["input_ids"] for text in ("import os\n", "def main():")]   # ragged: fine
else:
    prompts = torch.randint(0, cfg.vocab_size, (2, 8), device=args.device)   # a batch of 2 equal-length prompts


def show(row, prompt=0):  # a row's new tokens: ids, or the prompt's text -> the continuation's text
    if tok is None:
        return row
    return f"{tok.decode(prompts[prompt], skip_special_tokens=True)!r} -> {tok.decode(row)!r}"

n = max(len(p) for p in prompts)
gen = Generator(model, batch=2, max_len=n + 16, sampling=Sampling())   # greedy
reference = gen.generate(prompts, max_new_tokens=16)
print("loop experts:   ", show(reference[0].tolist()))

settings.experts = "grouped"                                # one switch: same weights, another expert path
fast = gen.generate(prompts, max_new_tokens=16)
print("grouped experts:", show(fast[0].tolist()), "(identical)" if torch.equal(fast, reference) else "(differs)")

sampled = Generator(model, 2, n + 16, Sampling(temperature=0.8, top_p=0.9)).generate(prompts, 16)
print("sampled:        ", show(sampled[0].tolist()))

ragged = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]] if tok is None else prompts   # different lengths, one batch
m = max(map(len, ragged))
batched = Generator(model, 2, m + 8).generate(ragged, max_new_tokens=8)
alone = torch.cat([Generator(model, 1, m + 8).generate([p], max_new_tokens=8) for p in ragged])
same = "(each as when run alone)" if torch.equal(batched, alone) else "(differs)"
rows = batched.tolist() if tok is None else " | ".join(show(row, i) for i, row in enumerate(batched.tolist()))
print("ragged batch:   ", rows, same)
