"""Model cards: `--model NAME` resolved against the JSON files in `models/`.

A card is a Hugging Face `config.json`, verbatim in form (data, not code), named after the model
(`models/OLMoE-1B-7B-0924.json`). `models/aliases.json` maps short names (`olmoe`, `mixtral`,
`qwen3`, ...) to card names. Tiny cards (`olmoe-tiny`, ...) have the real structure with toy sizes so
everything runs on a CPU in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

CARDS_DIR = Path(__file__).resolve().parent.parent / "models"


def card_names() -> list[str]:
    return sorted(p.stem for p in CARDS_DIR.glob("*.json") if p.stem != "aliases")


def aliases() -> dict:
    path = CARDS_DIR / "aliases.json"
    return json.loads(path.read_text()) if path.exists() else {}


def find_card(name: str) -> Path | None:
    """The card file for a name or alias (case-insensitive), or None."""
    target = aliases().get(name.lower(), name)
    for stem in card_names():
        if stem.lower() == target.lower():
            return CARDS_DIR / f"{stem}.json"
    return None


def load_card(name: str) -> dict:
    path = find_card(name)
    if path is None:
        raise KeyError(name)
    return json.loads(path.read_text())
