"""`python -m minimoe eval`: bits per byte of a model on a held-out text, and its experts' load.

    python -m minimoe eval --model olmoe-stdlib                       # models/stdlib-heldout.txt
    python -m minimoe eval --model mixtral-stdlib --data my.txt --heatmap load.png

The text is tokenized with the checkpoint's own tokenizer, an end-of-text token is put in front (so
the first real token is scored too), and `evaluate.bits_per_byte` scores it with sliding windows of
`--window` tokens moved by `--stride` (stated in the output). The numbers depend only on the model,
the text and those two numbers, so runs with different run settings (--experts, --quant, --prune,
--skip-threshold ...) compare directly. Routing is recorded on the way (instrument.ExpertLoad):
tokens per (layer, expert), each token counted once (in the first of the overlapping windows that holds
it), their imbalance, and with --heatmap a PNG of it.
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import prune_cli
from . import settings as run_settings
from .cards import cards_dir
from .cli import add_model_args, check_output_path, check_plot_path, load_tokenizer, out_path
from .evaluate import bits_per_byte, load_heldout
from .gate import SkipCount, counting_skips
from .generate import Generator
from .instrument import ExpertLoad, profiling
from .loader import build_model, read_config, weights_source
from .runtime import UsageError, check_settings, resolve_settings

DEFAULT_DATA = "stdlib-heldout.txt"


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="bits per byte and perplexity on a held-out text, and the expert load")
    add_model_args(e)
    e.add_argument("--data", help=f"UTF-8 text file (default: models/{DEFAULT_DATA}, shipped with minimoe)")
    e.add_argument("--window", type=int, default=512, help="tokens per window (the context length; default %(default)s)")
    e.add_argument("--stride", type=int, default=256, help="tokens each window moves on (and scores; default %(default)s)")
    e.add_argument("--batch-size", type=int, default=8, help="windows per forward (default %(default)s)")
    e.add_argument("--max-bytes", type=int, help="score only the first N bytes of the text (quick looks)")
    e.add_argument("--heatmap", "--load-heatmap", type=out_path, help="image (.png, .svg, .pdf, ...): tokens routed per (layer, "
                                                    "expert) over the text")
    e.add_argument("--json", type=out_path, help="write one JSON object to this path ('-' = stdout, instead of the table)")
    run_settings.add_args(e, hidden=run_settings.SPECULATION)
    prune_cli.add_prune_args(e, "the evaluated text's own tokens")


def _text(args) -> str:
    path = args.data or str(cards_dir() / DEFAULT_DATA)
    try:
        text = load_heldout(path)
    except OSError as err:
        raise UsageError(f"--data {path}: {err}") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"--data {path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    if args.max_bytes is not None:
        text = text.encode("utf-8")[:args.max_bytes].decode("utf-8", errors="ignore")
    if not text:
        raise UsageError(f"--data {path}: no text to score" + (" in its first --max-bytes" if args.max_bytes else ""))
    return text


def run(args) -> dict:
    if args.window < 2 or not 0 < args.stride < args.window or args.batch_size < 1:
        raise UsageError("need --window >= 2, 0 < --stride < --window and --batch-size >= 1")
    if args.max_bytes is not None and args.max_bytes < 1:
        raise UsageError(f"--max-bytes must be at least 1, got {args.max_bytes}")
    check_output_path(args.json, "--json")
    check_plot_path(args.heatmap, "--heatmap")
    decoding = run_settings.given(args, run_settings.SPECULATION)
    if decoding:                                     # scoring is teacher-forced: nothing to draft
        raise UsageError(f"{decoding[0]} is a decoding setting; eval scores the text teacher-forced (no decoding)")
    try:
        s = resolve_settings(run_settings.from_args(args))
    except ValueError as err:
        raise UsageError(str(err)) from None
    cfg, folder = read_config(args.model)
    check_settings(s, cfg)
    if args.heatmap and not cfg.is_moe:
        raise UsageError(f"--heatmap shows routed experts' load: {args.model} is a dense model")
    prune = prune_cli.prune_request(args)           # --prune: checked before the model is built
    if prune is not None:
        prune_cli.check_request(prune, cfg, s, folder)
    if args.window > cfg.max_position_embeddings:
        raise UsageError(f"--window {args.window} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    tok = load_tokenizer(folder)
    if tok is None:
        raise UsageError(f"eval needs the checkpoint's tokenizer files (and transformers): {args.model} has none")
    text = _text(args)
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else (cfg.eos_token_ids or (0,))[0]
    ids = torch.tensor([bos] + tok(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if ids.numel() and int(ids.max()) >= cfg.vocab_size:
        raise UsageError(f"the tokenizer beside {args.model} gives id {int(ids.max())}, outside the model's vocabulary "
                         f"of {cfg.vocab_size}: it is not this model's tokenizer")
    source = weights_source(args.weights, folder)
    model, cfg, folder = build_model(args.model, args.weights, dtype=s.torch_dtype, device=s.device, settings=s,
                                     seed=s.seed)
    pruned = None
    if prune is not None:                           # in place, calibrated on this text unless told otherwise
        cfg, pruned = prune_cli.prune_for_eval(prune, model, folder, s, ids)
    gens = {}

    def logits_fn(batch: torch.Tensor) -> torch.Tensor:            # [B, S] -> [B, S, V]
        B, S = batch.shape
        if (B, S) not in gens:
            gens[(B, S)] = Generator(model, B, S)
        gen = gens[(B, S)]
        gen.reset()
        return gen.append(batch.to(gen.device))

    torch.manual_seed(s.seed)                       # --router zipf / uniform draw from torch's generator: repeatable
    load = ExpertLoad.of(cfg, s.device)
    skips = SkipCount(cfg.n_layers, s.device)       # what --skip-threshold drops
    counted_to = 0

    def count_once(spans) -> None:                  # windows overlap: a token's routing counts in the first one only
        nonlocal counted_to
        keep = []
        for start, end, _ in spans:
            keep.append(torch.arange(start, end) >= counted_to)                  # [S]
            counted_to = max(counted_to, end)
        load.mask = skips.mask = torch.cat(keep).to(s.device)                    # [B * S], the router's token order

    with profiling(None, load), counting_skips(skips):
        res = bits_per_byte(logits_fn, ids, len(text.encode("utf-8")), args.window, args.stride, args.batch_size,
                            desc=f"eval {args.model}", before_batch=count_once)
    load.mask = skips.mask = None
    if args.heatmap:
        load.heatmap(args.heatmap, title=f"tokens routed per expert: {ids.numel()} tokens (eval's start token first), "
                                         f"window {args.window} stride {args.stride}, each counted once")
        print(f"# expert-load heatmap written to {args.heatmap}", file=sys.stderr)
    summary = load.summary() if cfg.is_moe else {}
    return {"model": args.model, "weights": source or "dummy", "data": args.data or DEFAULT_DATA,
            "settings": s.as_json(cfg), "routing": routing_line(s, cfg), "prune": pruned, **res,
            "skipped_slots": skips.fraction() if s.skip_threshold else None,
            "expert_load": {k: summary[k] for k in ("imbalance_max", "imbalance_mean")} if summary else None}


def routing_line(s, cfg) -> str | None:
    """The settings that change which experts score the text, where they differ from the card's: eval's header
    names them (a score read without them would be taken for the model's own). None when every one is the card's."""
    parts = []
    if s.router and s.router != cfg.router:
        parts.append(f"--router {s.router}" + (f" (--zipf-s {s.zipf_s})" if s.router == "zipf" else "")
                     + f" (card: {cfg.router})")
    if s.top_k and s.top_k != cfg.top_k:
        parts.append(f"--topk {s.top_k} (card: {cfg.top_k})")
    if s.skip_threshold:
        parts.append(f"--skip-threshold {s.skip_threshold}")
    return ", ".join(parts) or None


def print_table(out: dict) -> None:
    st = out.get("settings") or {}
    fmt = st.get("quant", "none")
    print(f"# eval {out['model']} ({out['weights']}) on {out['data']}: {out['bytes']} bytes, "
          f"{out['tokens_scored']} tokens scored, window {out['window']} stride {out['stride']}, "
          f"dtype {st.get('dtype', '?')}, {'no --quant' if fmt == 'none' else '--quant ' + fmt}"
          f"{' (+ lm_head)' if st.get('quant_lm_head') else ''}")
    if out.get("routing"):
        print(f"# not the card's routing: {out['routing']}"
              + (f"; {100 * out['skipped_slots']:.1f}% of the routed slots dropped" if out.get("skipped_slots")
                 is not None else ""))
    if out.get("prune"):
        print(f"# {out['prune']}")
    print(f"bits/byte {out['bpb']:.4f}   loss {out['loss']:.4f} nats/token   perplexity {out['ppl']:.3f}")
    if out["expert_load"]:
        print(f"expert load imbalance (max/mean tokens per expert): max {out['expert_load']['imbalance_max']:.2f}, "
              f"mean over layers {out['expert_load']['imbalance_mean']:.2f}")
