"""`python -m minimoe generate | eval | prune | bench ...`: the command line of an installed minimoe.

Every subcommand takes the same run-settings flags (settings.py: one meaning, one default each), the
same `--model` (a card or alias from models/, a checkpoint directory, or a hub id) and `--weights`
(auto: the directory's own safetensors, dummy for a config card; `dummy` must be asked for).
`generate` is also how a new user checks that a checkpoint loads: every name/shape problem is
reported before any weight is allocated. Examples:
    python -m minimoe generate --model olmoe-tiny --prompt-ids 1,2,3 --max-new-tokens 8
    python -m minimoe generate --model olmoe-stdlib --prompt "def " --max-new-tokens 64
    python -m minimoe generate --model ./my-olmoe --prompt-file prompts.txt --stop-at-eos
    python -m minimoe generate --model olmoe-tiny --prompt-ids 1,2,3 --stop-ids 461,7
    python -m minimoe bench --model olmoe --fused --bs 64        (the same as bench.py)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch

from . import evaluate_cli, prune_cli
from . import settings as run_settings
from . import spec_cli
from .bench.plans import check as parallel_check
from .cli import ArgumentParser, add_model_args, check_output_path, load_tokenizer, out_path, quiet_broken_pipe
from .generate import Generator
from .loader import build_model, read_config, weights_source
from .parallel import rank as parallel_rank
from .runtime import UsageError, check_settings, resolve_settings
from .sampling import Sampling


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate tokens from prompts")
    add_model_args(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    src.add_argument("--prompt", help="prompt text (needs the checkpoint's tokenizer and transformers)")
    src.add_argument("--prompt-file", help="a text file, one prompt per line (a ragged batch)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (default %(default)s)")
    g.add_argument("--batch", type=int, default=1,
                   help="run a single prompt as a batch of this many copies (default %(default)s)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (the default when no sampling flag)")
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (0 = greedy; default 0, or 1.0 when --top-k / --top-p / --min-p "
                        "is given, as in vLLM and transformers)")
    g.add_argument("--top-k", dest="sample_top_k", type=int, default=0, metavar="K",
                   help="sample among the K most likely tokens (0 = off; --topk is the router's K)")
    g.add_argument("--top-p", dest="sample_top_p", type=float, default=1.0, metavar="P",
                   help="nucleus: the smallest set reaching this mass (1 = off)")
    g.add_argument("--min-p", dest="sample_min_p", type=float, default=0.0, metavar="P",
                   help="drop tokens below min-p x the top probability (0 = off)")
    g.add_argument("--stop-at-eos", action="store_true", help="stop each sequence at any of the model's stop ids")
    g.add_argument("--stop-ids", metavar="IDS",
                   help="comma-separated token ids that also stop a sequence (with or without --stop-at-eos)")
    g.add_argument("--json", type=out_path, help="write one JSON object to this path ('-' = stdout, instead of text)")
    run_settings.add_args(g)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m minimoe", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    evaluate_cli.add_parser(sub)
    prune_cli.add_parser(sub)
    sub.add_parser("bench", help="the benchmark (bench.py); `python -m minimoe bench --help`", add_help=False)
    p.subcommands = sub.choices   # name -> the subcommand's parser (main names it in a refusal)
    return p


def _id_list(flag: str, text: str) -> list[int]:
    """"1, 2,3" -> [1, 2, 3]; "" (or blanks) -> [] (the caller says what is missing); UsageError (one line) for
    anything else, an empty item ("1,,2", "1,") included."""
    if not text.strip():
        return []
    items = [t.strip() for t in text.split(",")]
    try:
        if any(not t for t in items):
            raise ValueError
        return [int(t) for t in items]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _prompts(args, tok, vocab: int) -> list[list[int]]:
    if args.prompt_ids is not None:
        prompts = [_id_list("--prompt-ids", args.prompt_ids)] * args.batch
    else:
        path = None if args.prompt_file is None else Path(args.prompt_file).expanduser()
        if path is not None and (not path.exists() or path.is_dir()):    # a pipe (<(...), /dev/stdin) reads fine
            raise UsageError(f"--prompt-file {args.prompt_file}: " + ("is a folder" if path.is_dir() else
                                                                       "no such file"))
        if tok is None:
            raise UsageError("--prompt/--prompt-file need a checkpoint with tokenizer files and transformers; "
                             "use --prompt-ids")
        if args.prompt is not None:
            try:                                     # argv bytes that are not UTF-8 arrive as lone surrogates
                args.prompt.encode("utf-8")
            except UnicodeEncodeError as e:
                bad = args.prompt.encode("utf-8", "surrogateescape")
                raise UsageError(f"--prompt is not UTF-8 text: byte {bad[e.start]:#04x} at byte "
                                 f"{len(args.prompt[:e.start].encode('utf-8', 'surrogateescape'))}") from None
            prompts = [tok(args.prompt)["input_ids"]] * args.batch
        else:
            try:                                     # "\n" / "\r\n" only: str.splitlines also cuts at form feeds
                lines = [ln.removesuffix("\r") for ln in open(path, encoding="utf-8", newline="").read()
                         .split("\n")]
            except OSError as e:
                raise UsageError(f"--prompt-file {args.prompt_file}: {e.strerror}") from None
            except UnicodeDecodeError as e:
                raise UsageError(f"--prompt-file {args.prompt_file} is not UTF-8 text: {e.reason} at byte "
                                 f"{e.start}") from None
            while lines and not lines[-1].strip():   # trailing blank lines end the file; others are refused,
                lines.pop()                          # so output row i is always line i + 1
            blank = next((i for i, ln in enumerate(lines) if not ln.strip()), None)
            if blank is not None or not lines:
                raise UsageError(f"--prompt-file {args.prompt_file}: " + (
                    f"line {blank + 1} is blank (one prompt per line: output row i answers line i)"
                    if blank is not None else "no prompt in it"))
            if args.batch != 1:
                raise UsageError("--batch copies one prompt; --prompt-file already gives one prompt per line")
            prompts = [tok(line)["input_ids"] for line in lines]
    if not prompts or any(not p for p in prompts):
        raise UsageError("a prompt is empty: give at least one token")
    bad = next((t for p in prompts for t in p if not 0 <= t < vocab), None)
    if bad is not None:
        raise UsageError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})")
    return prompts


def generate(args) -> dict:
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch", args.batch)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    filtered = (args.sample_top_k, args.sample_top_p, args.sample_min_p) != (0, 1.0, 0.0)
    temperature = args.temperature if args.temperature is not None else (1.0 if filtered else 0.0)
    sampling = Sampling(temperature, args.sample_top_k, args.sample_top_p, args.sample_min_p)
    if args.greedy and sampling != Sampling():
        raise UsageError("--greedy contradicts --temperature/--top-k/--top-p/--min-p")
    try:
        sampling.check()
    except ValueError as e:    # Sampling names its fields; the command line knows them as flags
        raise UsageError(re.sub(r"\b(temperature|top_k|top_p|min_p)\b",
                                lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None
    try:
        s = resolve_settings(run_settings.from_args(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_output_path(args.json, "--json")
    cfg, folder = read_config(args.model)
    check_settings(s, cfg)
    stops = _stop_ids(args, cfg)
    tok = load_tokenizer(folder)
    prompts = _prompts(args, tok, cfg.vocab_size)
    longest = max(map(len, prompts))
    positions = longest + args.max_new_tokens - 1              # the last new token is never fed back
    if s.draft:                # speculation writes up to G draft tokens past that (spec_cli.py)
        positions = spec_cli.positions_needed(s.gamma, longest, args.max_new_tokens)
    if positions > cfg.max_position_embeddings:
        draft = (f" (with up to G={s.gamma} draft tokens verified past them)" if s.draft else "")
        raise UsageError(f"{longest} prompt + {args.max_new_tokens} new tokens need {positions} positions{draft}, "
                         f"more than the model's max_position_embeddings {cfg.max_position_embeddings}")
    parallel_check(s, ragged=len(set(map(len, prompts))) > 1, compare=False)
    torch.manual_seed(s.seed)
    source = weights_source(args.weights, folder)
    model, cfg, folder = build_model(args.model, args.weights, dtype=s.torch_dtype, device=s.device, settings=s,
                                     seed=s.seed)
    spec = None
    if s.draft:                # speculative decoding: draft, graphs, --gamma auto and its timing (spec_cli.py)
        new, seconds, spec = spec_cli.generate_cli(model, s, prompts, args.max_new_tokens, sampling, stops)
    else:
        plan = getattr(model, "plan", None)       # --ep / --tp under torchrun: this rank's rows, gathered after
        local = prompts if plan is None else [prompts[i] for i in plan.local_rows(len(prompts))]
        gen = Generator(model, len(local), positions, sampling)
        if plan is not None and plan.mesh.ep > 1:
            # EP ranks decode different rows, so each draws from its own seed (the global generators: a CUDA graph
            # captures those); the TP peers of one EP rank draw alike. Rows are independent samples, reproducible
            # for one --seed and plan, not the one-process draws; greedy tokens are the one-process tokens.
            torch.manual_seed(s.seed + 1_000_003 * plan.mesh.ep_rank)
        if s.use_graphs and (not cfg.is_moe or s.experts != "loop"):
            from .graphs import enable_graphs
            enable_graphs(gen)
        t0 = time.perf_counter()
        new = gen.generate(local, args.max_new_tokens, stops)     # under a plan the ranks stop at the same step
        new = new if plan is None else plan.gather_rows(new, len(prompts))
        seconds = time.perf_counter() - t0
    rows = [_until_stop(row, stops) for row in new.tolist()]
    out = {"model": args.model, "family": cfg.family, "weights": source or "dummy",
           "settings": s.as_json(cfg), "sampling": dataclasses.asdict(sampling),
           "prompt_ids": prompts if args.prompt_file else prompts[0], "new_ids": rows, "seconds": round(seconds, 4)}
    if tok is not None:
        out["text"] = [tok.decode(row) for row in rows]
    if spec is not None:
        out["speculative"] = spec
    return out


def _stop_ids(args, cfg) -> tuple[int, ...]:
    """The ids that end a sequence: the model's (--stop-at-eos) and --stop-ids'. UsageError for a bad list."""
    ids = list(cfg.eos_token_ids) if args.stop_at_eos else []
    if args.stop_ids is not None:
        extra = _id_list("--stop-ids", args.stop_ids)
        bad = next((t for t in extra if not 0 <= t < cfg.vocab_size), None)
        if not extra or bad is not None:
            raise UsageError(f"--stop-ids: {'no id given' if not extra else f'id {bad}'} "
                             f"(ids must lie in the vocabulary [0, {cfg.vocab_size}))")
        ids += extra
    return tuple(sorted(set(ids)))


def _until_stop(row: list[int], stop_ids) -> list[int]:
    for i, t in enumerate(row):
        if t in stop_ids:
            return row[:i + 1]
    return row


@quiet_broken_pipe
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["bench"]:
        from .bench.cli import main as bench_main
        return bench_main(argv[1:], prog="python -m minimoe bench")
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:                     # the subcommand's own refusal, which names the subcommand's --help
        p.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "eval":
            out = evaluate_cli.run(args)
        elif args.command == "prune":
            out = prune_cli.run(args)
        else:
            out = generate(args)
    except (ValueError, MemoryError, NotImplementedError) as e:   # UsageError, CheckpointError included
        sys.stderr.write(f"error: {e}\n")          # one write: torchrun's ranks share the terminal
        return 2
    if parallel_rank() != 0:                      # under torchrun, rank 0 reports
        return 0
    if args.json:
        text = json.dumps(out)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.json != "-":
        _print_text(args, out)
    if args.command == "generate" and out["seconds"] > 0:     # gpt-fast's summary line; bench.py splits TTFT / ITL
        n = sum(map(len, out["new_ids"]))
        print(f"# {n} new tokens in {out['seconds']:.2f} s, {n / out['seconds']:.1f} tok/s (prefill included; "
              f"bench.py measures TTFT and ITL)", file=sys.stderr)
    return 0


def _print_text(args, out: dict) -> None:
    if args.command == "prune":
        prune_cli.print_summary(out)
        return
    if args.command == "eval":
        evaluate_cli.print_table(out)
        return
    if "speculative" in out:                      # stdout keeps only the tokens (and text): this goes to stderr
        print("# " + out["speculative"]["summary"], file=sys.stderr)
    for i, row in enumerate(out["new_ids"]):
        if len(out["new_ids"]) > 1 and "text" in out:     # texts span lines: each under its prompt's number
            print(f"# prompt {i}")
        print(" ".join(map(str, row)))
        if "text" in out:
            print(out["text"][i])


if __name__ == "__main__":
    sys.exit(main())
