"""Train minimoe's small models on the Python standard library, in one command.

    # once, on the CPU machine (Python 3.11 with its test suite): the train corpus as int16 tokens, ~45 s
    python scripts/train_tiny.py --preset h200 --device cpu --prepare-only --tokens out/stdlib-tokens.safetensors
    # on one H200, out/stdlib-tokens.safetensors carried along: the four models at once, ~4 minutes
    python scripts/train_tiny.py --preset h200 --parallel --tokens out/stdlib-tokens.safetensors
    # the whole pipeline on a CPU, one thread, ~70 s
    OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 python scripts/train_tiny.py --preset cpu --out /tmp/t --log-dir /tmp/t

What happens, in order (each step is one function below):
1. corpus: the stdlib's `*.py` files, split by a hash of their path (`stdlib_corpus.py`), the train
   files that overlap the shipped held-out text dropped, tokenized once with the shipped tokenizer
   and cached as int16 in `<work>/tokens-<hash>.safetensors` (a rerun or a sibling process reuses it).
   `--tokens FILE` reads a corpus tokenized elsewhere (or writes one there): a Debian-style Python
   ships no `test/` package, a third of the text, so the H200 run reads the 3.11 corpus made here;
2. per model (`tiny_models.py` says which and why): transformers' own class, sdpa attention, the
   experts implementation asked for (logged: the one transformers actually picked), plain AdamW with
   warmup + cosine and gradient clipping, router load-balancing loss in the MoE losses; the loop
   (`train_loop.py`) stops at `--steps` or at `--time-budget-s`, whichever comes first, and saves
   resumable state every minute: rerun the same command and it continues where it stopped;
3. export: `save_pretrained` in bfloat16 to `<out>/<name>/` with the tokenizer files and a generation
   config (eos = pad = `<|endoftext|>` = 0); the dense baseline is scored, not shipped;
4. score: held-out loss, perplexity and bits per byte of the exported (bf16) weights on
   `models/stdlib-heldout.txt` (`minimoe.evaluate`, windows of the training length, stride half of it);
5. report: `<log-dir>/train_log.json` (merged with earlier models' entries) and `loss_curves.png`.

`--parallel` runs one process per model at once; the parent tokenizes first, then waits, then
reports. Tiny models are launch-bound: olmoe-stdlib alone ran 22 steps/s on an H200 (64 x 512
tokens a step, bf16 grouped_mm experts), and 11 steps/s each with four processes sharing the GPU,
so together they finish in half the time they would take one after another.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import stdlib_corpus as corpus  # noqa: E402
from minimoe.evaluate import bits_per_byte, load_heldout  # noqa: E402
from tiny_models import MODELS, PRESETS, SHORT, build_model, has_experts, is_moe, param_counts  # noqa: E402
from train_loop import Precision, cast_params, load_state, make_optimizer, train_steps  # noqa: E402

REPO = corpus.REPO


def prepare_corpus(cfg, cache_dir: Path, tokenizer_dir: Path, heldout_path: Path,
                   tokens_file: Path | None = None) -> dict:
    """Train ids (int16 [N], documents joined by EOT) and held-out ids ([0] + the text's ids: the leading
    EOT lets the first real token be scored). Read from `tokens_file` when it exists (a corpus made on
    another machine), else from this machine's stdlib via a cache keyed by content (or `tokens_file`)."""
    text = load_heldout(heldout_path)
    prints = corpus.fingerprint(tokenizer_dir, text)
    if tokens_file and tokens_file.exists():
        ids, about = corpus.read_tokens(tokens_file, prints)
        path = tokens_file
    else:
        train, about = corpus.train_documents(text, cfg.corpus_bytes)
        digest = hashlib.sha1(json.dumps(prints).encode())
        for rel, t in train.items():
            digest.update(rel.encode() + b"\0" + t.encode())
        path = tokens_file or cache_dir / f"tokens-{digest.hexdigest()[:16]}.safetensors"
        if path.exists():
            ids, about = corpus.read_tokens(path, prints)
        else:
            t0, tok = time.time(), corpus.load_backend(tokenizer_dir)
            ids = {"train": corpus.encode_documents(tok, list(train.values())),
                   "heldout": torch.tensor([0] + tok.encode(text, add_special_tokens=False).ids, dtype=torch.int32)}
            print(f"tokenized {len(train)} files in {time.time() - t0:.1f} s -> {path}", file=sys.stderr)
            corpus.write_tokens(path, ids, about, prints)
    meta = dict(about, train_tokens=ids["train"].numel(), heldout_path=str(heldout_path),
                heldout_bytes=len(text.encode()), heldout_tokens=ids["heldout"].numel() - 1, tokens_file=str(path))
    return dict(train=ids["train"], heldout=ids["heldout"], heldout_bytes=len(text.encode()), meta=meta)


def heldout_score(model, ids: torch.Tensor, text_bytes: int, cfg, device: torch.device, desc: str,
                  autocast: bool = False) -> dict:
    """minimoe.evaluate's sliding-window score with a transformers model as the logits function."""
    was_training = model.training
    model.eval()

    def logits_fn(batch: torch.Tensor) -> torch.Tensor:                # [B, S] -> [B, S, V]
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            return model(input_ids=batch.to(device), use_cache=False).logits

    result = bits_per_byte(logits_fn, ids, text_bytes, window=cfg.seq_len, stride=cfg.seq_len // 2,
                           batch_size=cfg.eval_batch, desc=desc)
    model.train(was_training)
    return result


def export(model, folder: Path, tokenizer_dir: Path) -> int:
    """bf16 `save_pretrained` + tokenizer files + generation config; returns the folder's bytes."""
    from transformers import GenerationConfig
    cast_params(model, torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.save_pretrained(folder)
    for name in corpus.TOKENIZER_FILES:
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def train_model(name: str, preset: str, cfg, data: dict, device: torch.device, out: Path, work: Path,
                tokenizer_dir: Path, overrides: dict | None = None) -> dict:
    """Build (or resume), train, export, score one model; returns its log entry (also written to
    `<work>/<name>.log.json`)."""
    cfg = cfg.for_model(name)
    model = build_model(name, preset, cfg.experts, overrides, cfg.seed).to(device)
    prec = Precision(model, cfg.precision, device)
    opt = make_optimizer(prec, cfg)
    meta = load_state(work / name, prec, opt) or dict(step=0, tokens=0, elapsed=0.0, history=[], evals=[])
    resumed_from = meta["step"]
    prefix = data["heldout"][:cfg.eval_tokens]              # the periodic eval: a prefix, loss only
    prefix_text = corpus.load_backend(tokenizer_dir).decode(prefix[1:].tolist(), skip_special_tokens=False)

    def periodic_eval() -> float:
        return heldout_score(model, prefix, len(prefix_text.encode()), cfg, device, f"{name} eval",
                             autocast=prec.mode == "autocast")["loss"]

    run = dict(train=data["train"].to(device), moe=is_moe(model.config))
    bar = tqdm(total=cfg.steps_total, initial=meta["step"], desc=name, unit="step", file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 20)
    model.train()
    meta = train_steps(model, prec, opt, run, cfg, meta, work / name, periodic_eval, bar)
    bar.close()
    counts, shipped = param_counts(model), MODELS[name][1]
    disk = export(model, out / name, tokenizer_dir) if shipped else None
    cast_params(model, torch.bfloat16)    # score the weights as shipped (bf16 values) ...
    if device.type == "cpu":
        cast_params(model, torch.float32)  # ... computed in fp32 on a CPU, in bf16 on a GPU
    final = heldout_score(model, data["heldout"], data["heldout_bytes"], cfg, device, f"{name} held-out")
    log = model_log(name, model, cfg, meta, final, counts, disk, device, out, resumed_from)
    (work / f"{name}.log.json").write_text(json.dumps(log, indent=1))
    print(f"{name}: {meta['step']} steps, {meta['tokens'] / 1e6:.1f}M tokens, {meta['elapsed']:.0f} s, "
          f"held-out bpb {final['bpb']:.4f} (loss {final['loss']:.4f}, ppl {final['ppl']:.2f})", file=sys.stderr)
    return log


def model_log(name, model, cfg, meta, final, counts, disk, device, out, resumed_from) -> dict:
    import transformers
    return dict(
        name=name, cls=MODELS[name][0], shipped=MODELS[name][1], disk_bytes=disk,
        checkpoint=str(out / name) if MODELS[name][1] else None, params=counts,
        config=model.config.to_diff_dict(), precision=cfg.precision,
        experts_implementation=model.config._experts_implementation if has_experts(model.config) else None,
        attn_implementation=model.config._attn_implementation,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        steps=meta["step"], steps_planned=cfg.steps_total, resumed_from=resumed_from, tokens_seen=meta["tokens"],
        train_time_s=round(meta["elapsed"], 1), time_budget_s=cfg.time_budget_s,
        final_train_loss=meta["history"][-1]["loss"] if meta["history"] else None,
        heldout=final, history=meta["history"], evals=meta["evals"],
        settings={k: v for k, v in vars(cfg).items() if k != "steps"},
        command=" ".join(shlex.quote(a) for a in sys.argv))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", choices=PRESETS, default="h200" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="olmoe,mixtral,draft,dense",
                    help=f"comma-separated, short or full names: {SHORT}")
    ap.add_argument("--out", type=Path, default=REPO / "models", help="checkpoints go to OUT/<name>/")
    ap.add_argument("--work-dir", type=Path, help="state + token cache (default OUT/.train-state)")
    ap.add_argument("--log-dir", type=Path, default=REPO / "docs" / "train")
    ap.add_argument("--tokenizer", type=Path, default=corpus.TOKENIZER_DIR)
    ap.add_argument("--heldout", type=Path, default=corpus.HELDOUT_PATH)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, help="optimizer steps for every model (default: the preset's)")
    ap.add_argument("--stop-after", type=int, help="stop at this step, schedule unchanged (resume later)")
    ap.add_argument("--time-budget-s", type=float, help="training seconds per model (default: the preset's)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--lr", type=float, help="peak learning rate for every model (default: the preset's)")
    ap.add_argument("--precision", choices=("fp32", "autocast", "bf16"))
    ap.add_argument("--experts", choices=("eager", "grouped_mm"))
    ap.add_argument("--seed", type=int)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 for --preset cpu)")
    ap.add_argument("--tokens", type=Path, help="pre-tokenized corpus: used if it exists, else written there")
    ap.add_argument("--prepare-only", action="store_true", help="tokenize (or check) the corpus, then stop")
    ap.add_argument("--parallel", action="store_true", help="one process per model, all at once")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)   # a --parallel worker
    return ap.parse_args(argv)


def settings(args):
    """The preset with the command line's overrides applied."""
    from dataclasses import replace
    cfg = PRESETS[args.preset]
    fields = dict(batch=args.batch, seq_len=args.seq_len, precision=args.precision,
                  experts=args.experts, seed=args.seed, time_budget_s=args.time_budget_s,
                  stop_step=args.stop_after)
    cfg = replace(cfg, **{k: v for k, v in fields.items() if v is not None})
    if args.steps is not None:
        cfg = replace(cfg, steps={name: args.steps for name in MODELS})
    if args.lr is not None:
        cfg = replace(cfg, lr={name: args.lr for name in MODELS})
    return cfg


def model_names(spec: str) -> list[str]:
    names = [SHORT.get(s.strip(), s.strip()) for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {list(SHORT)} or {list(MODELS)}")
    return names


def run_parallel(argv: list[str], names: list[str]) -> list[str]:
    """One child process per model (same arguments plus --models NAME --child); returns the failed names."""
    threads = max(1, (os.cpu_count() or 1) // len(names))
    procs = {name: subprocess.Popen([sys.executable, __file__, *argv, "--models", name, "--child",
                                     "--threads", str(threads)]) for name in names}
    return [name for name, p in procs.items() if p.wait() != 0]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    threads = args.threads or (1 if args.preset == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    cfg, names = settings(args), model_names(args.models)
    work = args.work_dir or args.out / ".train-state"
    data = prepare_corpus(cfg, work, args.tokenizer, args.heldout, args.tokens)
    print(f"corpus: {json.dumps(data['meta'])}", file=sys.stderr)
    if args.prepare_only:
        return 0
    epochs = max(cfg.steps[n] for n in names) * cfg.batch * cfg.seq_len / data["train"].numel()
    if not args.child:      # data-limited: past ~16 epochs held-out loss stops improving (or worsens)
        print(f"plan: up to {epochs:.3g} epochs of {data['train'].numel() / 1e6:.2f}M train tokens"
              + ("  WARNING: a larger corpus (--tokens) or fewer --steps" if epochs > 16 else ""), file=sys.stderr)
    if args.child:
        train_model(names[0], args.preset, cfg, data, torch.device(args.device), args.out, work, args.tokenizer)
        return 0
    failed = []
    if args.parallel and len(names) > 1:
        failed = run_parallel(argv, names)
    else:
        for name in names:
            train_model(name, args.preset, cfg, data, torch.device(args.device), args.out, work, args.tokenizer)
    logs = {n: json.loads((work / f"{n}.log.json").read_text()) for n in names if n not in failed}
    from train_report import write_report
    path = write_report(args.log_dir, logs, data["meta"], " ".join(shlex.quote(a) for a in sys.argv))
    print(f"wrote {path} and {path.parent / 'loss_curves.png'}", file=sys.stderr)
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
