"""`python -m minimoe generate ...`: generate tokens from a card, a local checkpoint or a hub id.

It is also how a new user checks that a checkpoint loads: every name/shape problem is reported
before any weight is allocated. Examples:
    python -m minimoe generate --model olmoe-tiny --prompt-ids 1,2,3 --max-new-tokens 8
    python -m minimoe generate --model ./my-olmoe --prompt "The capital of France is" --max-new-tokens 16
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .config import RunSettings
from .generate import Generator, Sampling
from .loader import build_model
from .runtime import (UsageError, check_settings, pick_device, pick_dtype, resolve_auto, resolve_gemv,
                      resolve_pdl)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimoe", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate tokens from a prompt")
    g.add_argument("--model", required=True, help="model card name/alias (models/), checkpoint dir, or hub id")
    g.add_argument("--weights", default="auto",
                   help="'dummy' (random, real shapes), a safetensors dir, or 'auto' (the model dir's own; "
                        "dummy for a card)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    src.add_argument("--prompt", help="prompt text (needs the checkpoint's tokenizer and transformers)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    g.add_argument("--batch", type=int, default=1, help="run the prompt as a batch of this many copies")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default when no sampling flag)")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--stop-at-eos", action="store_true", help="stop a sequence at the model's EOS token")
    g.add_argument("--experts", default="loop", help="expert path: loop | grouped | fused")
    g.add_argument("--attn", default="auto", help="decode attention: sdpa | triton | flash (auto: triton on GPU)")
    g.add_argument("--ops", default="auto", help="norm/rope/router kernels: torch | triton (auto: triton on GPU)")
    g.add_argument("--gemv", default="auto", help="decode GEMVs with folded norms: torch | triton (auto: torch)")
    g.add_argument("--pdl", default="auto", help="Programmatic Dependent Launch: on | off (auto: off)")
    g.add_argument("--dtype", default="auto", help="bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--device", default="auto", help="cpu | cuda | cuda:N (auto: cuda when available)")
    g.add_argument("--seed", type=int, default=0, help="seed for dummy weights and sampling")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def _tokenizer(folder):
    if folder is None:
        return None
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:     # no tokenizer files, or transformers missing: ids only
        return None


def generate(args) -> dict:
    if args.max_new_tokens < 1 or args.batch < 1:
        raise UsageError("--max-new-tokens and --batch must be at least 1")
    if args.greedy and (args.temperature > 0 or args.top_k or args.top_p < 1):
        raise UsageError("--greedy contradicts --temperature/--top-k/--top-p")
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    try:
        sampling.check()
    except ValueError as e:
        raise UsageError(str(e)) from e
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    attn, fused_ops = resolve_auto(args.attn, args.ops, device)
    settings = RunSettings(experts=args.experts, attn=attn, fused_ops=fused_ops, gemv=resolve_gemv(args.gemv, device),
                           pdl=resolve_pdl(args.pdl, device))
    torch.manual_seed(args.seed)
    from .families import config_from_hf
    from .loader import resolve
    check_settings(settings, config_from_hf(resolve(args.model)[0]), device, dtype)
    model, cfg, folder = build_model(args.model, args.weights, dtype=dtype, device=device, settings=settings,
                                     seed=args.seed)
    tok = _tokenizer(folder)
    if args.prompt is not None:
        if tok is None:
            raise UsageError("--prompt needs a checkpoint with tokenizer files and transformers installed; "
                             "use --prompt-ids")
        ids = tok(args.prompt)["input_ids"]
    else:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError as e:
            raise UsageError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from e
    if len(ids) + args.max_new_tokens + 1 > cfg.max_position_embeddings:
        raise UsageError(f"{len(ids)} prompt + {args.max_new_tokens} new tokens exceed the model's "
                         f"max_position_embeddings {cfg.max_position_embeddings}")
    if not ids or not all(0 <= t < cfg.vocab_size for t in ids):
        raise UsageError(f"prompt ids must be non-empty and within the vocabulary [0, {cfg.vocab_size})")
    prompt = torch.tensor([ids] * args.batch, device=device)
    gen = Generator(model, args.batch, len(ids) + args.max_new_tokens + 1, sampling)
    t0 = time.perf_counter()
    new = gen.generate(prompt, args.max_new_tokens, cfg.eos_token_id if args.stop_at_eos else None)
    seconds = time.perf_counter() - t0
    out = {"model": args.model, "family": cfg.family, "prompt_ids": ids, "new_ids": new.tolist(),
           "seconds": round(seconds, 4)}
    if tok is not None:
        out["text"] = [tok.decode(row) for row in new.tolist()]
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = generate(args)
    except (ValueError, MemoryError, NotImplementedError) as e:   # UsageError, CheckpointError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        for i, row in enumerate(out["new_ids"]):
            print(" ".join(map(str, row)))
            if "text" in out:
                print(out["text"][i])
    return 0


if __name__ == "__main__":
    sys.exit(main())
