"""The pruning quality table: bits per byte of every method at 12.5 / 25 / 50 %, and of skipping, on a CPU.

    python scripts/prune_quality.py --model olmoe-stdlib --model mixtral-stdlib --out out/prune_quality
    python scripts/prune_quality.py --model ./my-checkpoint --max-bytes 20000          # a quick look

For each model: calibrate ONCE (calibrate.py) on held-out text the evaluation never scores (the bytes
of models/stdlib-heldout.txt after the first --max-bytes), save the statistics, then for every method
and ratio prune a copy of the model in memory (prune.py) and score the first --max-bytes bytes exactly
as `python -m minimoe eval` does (evaluate.bits_per_byte, window 512, stride 256, the checkpoint's
tokenizer, an end-of-text token in front). Rows:
    inter  frequency | gate | reap | random      (whole experts dropped, uniform per layer)
    intra  width | random                        (every expert narrower; widths rounded to multiples of 8)
    skip   --skip-threshold beta for 1/6 and 1/3 of the routed slots on the calibration text (NAEE)
Each cell is bits per byte and its change against the unpruned model. The issue's criterion is checked
at the end: the best inter method at 25 % within +3 % of unpruned, and better than frequency and random.
--max-bytes trades precision for time (default 40000 bytes, about 16k tokens per evaluation: some 4
minutes a model on one core); every evaluation scores the same bytes, so the rows compare pairwise.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from minimoe.calibrate import calibrate
from minimoe.cards import cards_dir
from minimoe.cli import load_tokenizer
from minimoe.evaluate import bits_per_byte, load_heldout
from minimoe.gate import SkipCount, counting_skips
from minimoe.generate import Generator
from minimoe.loader import build_model
from minimoe.prune import prune_, skip_threshold_for
from minimoe.settings import RunSettings

RATIOS = (0.125, 0.25, 0.5)
ROWS = [("inter", m) for m in ("frequency", "gate", "reap", "random")] + [("intra", m) for m in ("width", "random")]
SKIP_FRACTIONS = (1 / 6, 1 / 3)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="card name or checkpoint folder (repeatable)")
    p.add_argument("--max-bytes", type=int, default=40000, help="score the first N bytes of the held-out text")
    p.add_argument("--calib-tokens", type=int, default=32768, help="calibration tokens, from after the scored bytes")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    p.add_argument("--seed", type=int, default=0, help="the random rows' seed")
    p.add_argument("--out", help="folder for quality.json, the table and the calibration statistics")
    return p.parse_args(argv)


def evaluator(model, ids: torch.Tensor, nbytes: int, a):
    """bits per byte of `model` on the scored ids (the same windows every time)."""
    gens = {}

    def logits_fn(batch):
        key = tuple(batch.shape)
        if key not in gens:
            gens[key] = Generator(model, *key)
        gens[key].reset()
        return gens[key].append(batch)
    return bits_per_byte(logits_fn, ids, nbytes, a.window, a.stride, batch_size=8, desc="eval")["bpb"]


def texts(tok, cfg, a):
    """(scored ids with an end-of-text in front, their UTF-8 bytes, calibration ids from the rest)."""
    raw = load_heldout(cards_dir() / "stdlib-heldout.txt").encode("utf-8")
    scored = raw[:a.max_bytes].decode("utf-8", errors="ignore")
    rest = raw[a.max_bytes:].decode("utf-8", errors="ignore")
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else (cfg.eos_token_ids or (0,))[0]
    ids = torch.tensor([bos] + tok(scored)["input_ids"], dtype=torch.long)
    calib = torch.tensor(tok(rest)["input_ids"][:a.calib_tokens], dtype=torch.long)
    if calib.numel() < 1024:
        raise SystemExit(f"only {calib.numel()} calibration tokens after --max-bytes {a.max_bytes}: lower it")
    return ids, len(scored.encode("utf-8")), calib


def study(name: str, a) -> dict:
    s = RunSettings(device="cpu", dtype="fp32", experts="grouped", seed=a.seed)
    model, cfg, folder = build_model(name, "auto", dtype=torch.float32, device="cpu", settings=s, seed=a.seed)
    tok = load_tokenizer(folder) if folder is not None and any(Path(folder).glob("tokenizer*")) else None
    if tok is None:
        raise SystemExit(f"{name}: needs a checkpoint folder with tokenizer files")
    ids, nbytes, calib_ids = texts(tok, cfg, a)
    t0 = time.time()
    calib = calibrate(model, calib_ids, window=a.window, about={"source": "stdlib-heldout.txt after the scored bytes"})
    if a.out:
        calib.save(Path(a.out) / f"{Path(name).name}-calibration.safetensors")
    base = evaluator(model, ids, nbytes, a)
    print(f"# {name}: E={cfg.n_experts} K={cfg.top_k} I={cfg.moe_intermediate_size}; calibrated on {calib.tokens} "
          f"tokens in {time.time() - t0:.0f} s; scoring {nbytes} bytes ({ids.numel()} tokens); unpruned {base:.4f} bpb")
    cells = {}
    for kind, method in ROWS:
        for r in a.ratios:
            pruned = copy.deepcopy(model)
            try:
                prune_(pruned, calib, kind, method, r, seed=a.seed)
                cells[f"{kind} {method} {r:g}"] = evaluator(pruned, ids, nbytes, a)
            except ValueError as e:                   # a ratio this model's routing cannot take
                cells[f"{kind} {method} {r:g}"] = None
                print(f"#   {kind} {method} {r:g}: {e}")
            print(f"#   {kind:5} {method:9} {r:6.1%}: {_cell(cells[f'{kind} {method} {r:g}'], base)}")
    skips = {}
    for f in SKIP_FRACTIONS:
        beta, _ = skip_threshold_for(calib, f)
        s.skip_threshold = beta
        with counting_skips(SkipCount(cfg.n_layers, "cpu")) as c:
            bpb = evaluator(model, ids, nbytes, a)
        s.skip_threshold = 0.0
        skips[f"{f:.3f}"] = {"beta": beta, "skipped": c.fraction(), "bpb": bpb}
        print(f"#   skip beta {beta:.3f} ({c.fraction():.1%} of slots): {_cell(bpb, base)}")
    return {"model": name, "bytes": nbytes, "tokens": ids.numel(), "calibration_tokens": calib.tokens,
            "unpruned": base, "cells": cells, "skip": skips, "ratios": a.ratios}


def _cell(v, base) -> str:
    return "-" if v is None else f"{v:.4f} ({100 * (v / base - 1):+.1f}%)"


def table(res: dict) -> list[str]:
    base, rs = res["unpruned"], res["ratios"]
    lines = [f"### {res['model']}: bits per byte on the first {res['bytes']} bytes of stdlib-heldout.txt "
             f"(unpruned {base:.4f})", "",
             "| kind | method | " + " | ".join(f"{r:.1%}" for r in rs) + " |",
             "|---|---|" + "---|" * len(rs)]
    for kind, method in ROWS:
        lines.append(f"| {kind} | {method} | " + " | ".join(_cell(res["cells"][f"{kind} {method} {r:g}"], base)
                                                          for r in rs) + " |")
    for v in res["skip"].values():
        lines.append(f"| skip | beta {v['beta']:.3f} | {v['skipped']:.1%} of slots skipped: {_cell(v['bpb'], base)} |"
                     + " |" * (len(rs) - 1))
    return lines + [""] + verdict(res)


def verdict(res: dict) -> list[str]:
    """The issue's criterion at 25 % inter."""
    at = {m: res["cells"].get(f"inter {m} 0.25") for m in ("frequency", "gate", "reap", "random")}
    if any(v is None for v in at.values()):
        return ["criterion: 25% inter not measured for every method"]
    best = min(("reap", "gate"), key=lambda m: at[m])
    rise = 100 * (at[best] / res["unpruned"] - 1)

    def against(m):
        return "equal to" if at[best] == at[m] else "better than" if at[best] < at[m] else "WORSE than"
    return [f"criterion: best of reap/gate at 25% inter is {best}, {rise:+.1f}% bits per byte "
            f"({'within' if rise <= 3 else 'NOT within'} +3%); {against('frequency')} frequency "
            f"({at['frequency']:.4f}; equal = the same experts dropped), {against('random')} random "
            f"({at['random']:.4f})"]


def main(argv=None) -> int:
    a = parse(argv)
    torch.manual_seed(a.seed)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    results, lines = [], []
    for name in a.model:
        res = study(name, a)
        results.append(res)
        lines += table(res) + [""]
    print("\n".join(lines))
    if a.out:
        (Path(a.out) / "quality.json").write_text(json.dumps(results, indent=1))
        (Path(a.out) / "quality.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
