"""Where pruning's calibration comes from: `--calibration` (prune) / `--prune-calibration` (eval, bench.py).

    heldout            models/stdlib-heldout.txt, the text `eval` scores (so a model calibrated on it is flattered)
    random[:N]         N random token ids (2048 by default): only the shapes matter, for speed studies
    FILE.txt           a UTF-8 text, tokenized with the checkpoint's own tokenizer
    FILE.safetensors   statistics saved by an earlier calibration (`prune --save-stats`): one run, many ratios

`calibration_source` reads a spec before the model is built (a missing file is one line, before the heavy work);
`run_calibration` turns its answer into a Calibration (calibrate.py) once the model exists.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .calibrate import Calibration, calibrate
from .cards import cards_dir
from .cli import load_tokenizer
from .runtime import UsageError

RANDOM_TOKENS = 2048       # `random` calibration: only the shapes matter


def calibration_source(spec: str, folder, vocab: int, limit: int, seed: int, flag: str = "--calibration"):
    """spec -> a Calibration (statistics file) or (token ids [N], description). UsageError if unusable, naming
    `flag` (prune's --calibration, bench's and eval's --prune-calibration)."""
    if spec.endswith(".safetensors"):
        try:
            return Calibration.load(spec)
        except ValueError as e:
            raise UsageError(f"{flag} {e}") from None
    if spec == "random" or spec.startswith("random:"):
        n = RANDOM_TOKENS if spec == "random" else _count(spec.split(":", 1)[1], flag)
        ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))
        return ids, f"{n} random tokens"
    path = cards_dir() / "stdlib-heldout.txt" if spec == "heldout" else Path(spec).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise UsageError(f"{flag} {spec}: {what} (or give heldout, random[:N] or a statistics .safetensors)")
    # transformers builds an empty tokenizer for some model types when the folder has no tokenizer files
    tok = load_tokenizer(folder) if folder is not None and any(Path(folder).glob("tokenizer*")) else None
    if tok is None:
        raise UsageError(f"{flag} {spec} is text: it needs the checkpoint's tokenizer files (and "
                         f"transformers); use {flag} random[:N] or a statistics file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag} {spec}: {e}") from None
    ids = torch.tensor(tok(text, verbose=False)["input_ids"][:limit], dtype=torch.long)
    note = ", the text `eval` scores, so its bits per byte will be optimistic: calibrate on another file" \
        if spec == "heldout" else ""
    return ids, f"{ids.numel()} tokens of {path.name}{note}"


def _count(text: str, flag: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{flag} random:N needs a positive token count, got {text!r}")
    return n


def run_calibration(model, source, window: int = 512, batch: int = 8,
                    flag: str = "--calibration") -> tuple[Calibration, str]:
    """A Calibration from `calibration_source`'s answer (statistics are checked against the model). UsageError,
    naming `flag`, for statistics of another model."""
    if isinstance(source, Calibration):
        try:
            source.check_matches(model)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
        return source, f"statistics of {source.tokens} tokens ({source.about.get('source', 'a file')})"
    ids, what = source
    calib = calibrate(model, ids, window, batch, about={"source": what}, desc="calibrate")
    return calib, f"calibrated on {what}"
