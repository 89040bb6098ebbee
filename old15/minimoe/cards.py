"""Model cards: `--model NAME` resolved against the models that ship with minimoe (package data).

Two kinds of card live in the `models/` folder of the repository, installed as the package data
`minimoe/models/` (pyproject.toml maps one onto the other, so a wheel carries them):
  * a config card, `models/OLMoE-1B-7B-0924.json`: a Hugging Face `config.json`, verbatim in form
    (data, not code), for benchmarking with random weights of the real shapes;
  * a trained checkpoint, `models/olmoe-stdlib/` (config.json + model.safetensors + tokenizer):
    the small models minimoe trains and ships (scripts/train_tiny.py), which carry real weights.
`models/aliases.json` maps short names (`olmoe`, `mixtral`, `qwen3`, ...) to card names. Tiny cards
(`olmoe-tiny`, ...) have the real structure with toy sizes so everything runs on a CPU in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path


def cards_dir() -> Path:
    """The installed package data, or the repository's models/ when running from a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "models", here.parent / "models"):
        if (candidate / "aliases.json").exists():
            return candidate
    raise FileNotFoundError(f"minimoe's model cards are missing (looked in {here / 'models'} and "
                            f"{here.parent / 'models'}): reinstall the package")


def card_names() -> list[str]:
    root = cards_dir()
    files = [p.stem for p in root.glob("*.json") if p.stem != "aliases"]
    folders = [p.name for p in root.iterdir() if (p / "config.json").is_file()]
    return sorted(files + folders)


def aliases() -> dict:
    path = cards_dir() / "aliases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def find_card(name: str) -> Path | None:
    """The card file (config card) or folder (trained checkpoint) for a name or alias, or None."""
    target = aliases().get(name.lower(), name).lower()
    root = cards_dir()
    for stem in card_names():
        if stem.lower() == target:
            folder = root / stem
            return folder if folder.is_dir() else root / f"{stem}.json"
    return None


def card_folder(name: str) -> Path | None:
    """The checkpoint folder of a trained card; None for a config card. KeyError if no such card."""
    path = find_card(name)
    if path is None:
        raise KeyError(name)
    return path if path.is_dir() else None


def load_card(name: str) -> dict:
    """The card's config.json as a dict. KeyError if no such card."""
    path = find_card(name)
    if path is None:
        raise KeyError(name)
    return json.loads((path / "config.json" if path.is_dir() else path).read_text())
