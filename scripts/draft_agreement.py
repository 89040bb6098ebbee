"""Greedy agreement of a draft with its targets over the held-out text: the acceptance speculation will see.

For every position of models/stdlib-heldout.txt (teacher forcing, disjoint windows of --window tokens), the
draft's argmax next token is compared with each target's; the share that agree is the per-token probability
that greedy speculative decoding accepts a draft token (the first rejection ends a speculation run, so the
mean accepted length for gamma proposals is sum_{i<=gamma} a^i if tokens were independent).

    python scripts/draft_agreement.py --draft qwen3-stdlib-draft --targets olmoe-stdlib mixtral-stdlib
"""
import argparse
import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/scripts/", 1)[0])
from minimoe.cards import cards_dir  # noqa: E402
from minimoe.cli import load_tokenizer  # noqa: E402
from minimoe.evaluate import load_heldout  # noqa: E402
from minimoe.generate import Generator  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402


def argmaxes(name: str, ids: torch.Tensor, window: int) -> torch.Tensor:
    """[N] the model's greedy next token after each of the first N positions (disjoint windows)."""
    model, _, _ = build_model(name, "auto", dtype=torch.float32, settings=RunSettings(experts="grouped", device="cpu"))
    n = ids.numel() // window * window
    rows = ids[:n].view(-1, window)
    out = []
    for i in range(0, rows.shape[0], 8):
        batch = rows[i:i + 8]
        out.append(Generator(model, batch.shape[0], window).append(batch).argmax(-1).reshape(-1))
    return torch.cat(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draft", default="qwen3-stdlib-draft")
    p.add_argument("--targets", nargs="+", default=["olmoe-stdlib", "mixtral-stdlib"])
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--json", help="write the result here too")
    a = p.parse_args()
    text = load_heldout(cards_dir() / "stdlib-heldout.txt")
    tok = load_tokenizer(cards_dir() / a.draft)
    ids = torch.tensor([0] + tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    draft = argmaxes(a.draft, ids, a.window)
    res = {"draft": a.draft, "positions": draft.numel(), "window": a.window, "agreement": {}}
    for t in a.targets:
        res["agreement"][t] = (argmaxes(t, ids, a.window) == draft).double().mean().item()
        print(f"{a.draft} vs {t}: greedy agreement {res['agreement'][t]:.3f} over {draft.numel()} positions")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
