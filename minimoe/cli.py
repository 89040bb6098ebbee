"""Pieces every command line of minimoe shares: the model flags, the tokenizer, output-path checks.

Kept apart from the subcommands so `generate`, `eval` and `bench` give each flag one meaning and one
default, and so a bad output path is refused before any heavy work, not after a benchmark ran.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from .runtime import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose refusals are one line: `PROG: error: MESSAGE (PROG --help: the flags)` on stderr,
    exit status 2, without the usage block argparse prints above them; and no abbreviated flags (`--out` is not taken
    for `--output-len`). Subcommand parsers made through add_subparsers take this class too (argparse's default
    parser_class is the parent's)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help: the flags)\n")


def add_model_args(p: argparse.ArgumentParser, weights_default: str = "auto") -> None:
    p.add_argument("--model", required=True, help="model card name/alias (models/), checkpoint dir, or hub id")
    p.add_argument("--weights", default=weights_default,
                   help="auto (the model directory's own safetensors; dummy for a config card), dummy (random, "
                        "real shapes), or a safetensors directory")


def load_tokenizer(folder):
    """The checkpoint folder's tokenizer through transformers, or None (no tokenizer files, or no
    transformers installed: ids only)."""
    if folder is None or not any(Path(folder).glob("tokenizer*")):
        return None       # transformers would build an empty default tokenizer here and score garbage
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:
        return None


def out_path(path: str) -> str:
    """argparse type of an output file flag: `~` expanded once here, so the check and the writer see one path
    ('-' = stdout stays as it is)."""
    return path if path == "-" else str(Path(path).expanduser())


def check_output_path(path: str | None, flag: str) -> None:
    """Refuse an output file whose folder does not exist, or that names a folder, before the work that would
    fill it."""
    if path in (None, "-"):
        return
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name in it")
    if target.parent.exists() and not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: {target.parent} is a file")
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {target.parent} does not exist")


def check_plot_path(path: str | None, flag: str) -> None:
    """check_output_path for an image, matplotlib importable (the optional [plot] extra), and a file extension
    matplotlib writes without outside tools (.png, .pdf, .svg, ...; not .pgf, which needs LaTeX), all before the
    work. Raises UsageError (one line)."""
    check_output_path(path, flag)
    if path is not None:
        import importlib.util
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError(f"{flag} draws with matplotlib, which is not installed: pip install 'minimoe[plot]'")
        from matplotlib.backend_bases import FigureCanvasBase
        kinds = {k for k in FigureCanvasBase.get_supported_filetypes() if k != "pgf"}
        if Path(path).suffix.lower().lstrip(".") not in kinds:
            raise UsageError(f"{flag} {path}: name the image with an extension matplotlib writes "
                             f"({', '.join(sorted(kinds))}), e.g. {Path(path).with_suffix('.png')}")


def quiet_broken_pipe(main):
    """A command's main(), made quiet when its reader goes away (`python -m minimoe generate ... | head -1`):
    no BrokenPipeError traceback, the shell's exit status for a closed pipe (141 = 128 + SIGPIPE), and stdout
    pointed at /dev/null so the interpreter's final flush does not raise again (Python's documented recipe)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            rc = main(*args, **kwargs)
            sys.stdout.flush()
            return rc
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    return wrapper
