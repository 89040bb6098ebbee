"""Checkpoints: where `--model` points, its config, and its safetensors files as untrusted input.

`resolve` turns `--model` into a config dict and a folder: a card or alias from models/ (package data), a
directory with config.json, or a hub id fetched with `huggingface_hub.snapshot_download` (json, safetensors
and tokenizer files only; HF_HUB_OFFLINE honoured; a checkpoint's own code is never run). `read_config`
translates it (families.py) and adds generation_config.json's stop ids. `Checkpoint` opens a folder's
safetensors files lazily, reads only headers until a tensor (or a slice of one) is asked for, and turns
every safetensors error into a `CheckpointError` naming the file: safetensors only, never `torch.load`.
Which files: the index's weight map if there is one; else `model.safetensors` alone if it exists (a stray
`model_old.safetensors` beside it is never read, as in transformers); else every `*.safetensors`, refusing
a tensor name two files both hold. `StateDict` shows an in-memory {name: tensor} through the same interface.
"""
from __future__ import annotations

import difflib

import dataclasses
import json
import os
from pathlib import Path

import torch

from . import cards
from .config import ModelConfig
from .config_fields import CheckpointError  # noqa: F401  (defined there, below families and prequant: no cycle)
from .families import config_from_hf

HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]



def resolve(model: str) -> tuple[dict, Path | None]:
    """--model -> (config.json dict, directory holding it or None for a card)."""
    try:
        return cards.load_card(model), cards.card_folder(model)
    except KeyError:
        pass
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json")
        return _read_json(path / "config.json"), path
    if path.is_file():                           # models/x/config.json: the folder was meant
        hint = f": pass its folder, {path.parent}" if path.name == "config.json" else \
            " (a checkpoint is a folder holding config.json and *.safetensors)"
        raise CheckpointError(f"{model}: a file, not a directory{hint}")
    if model.startswith((".", "/", "~")):        # a path (--model or --draft), not a card or a hub id: say what is wrong
        why = "not a directory (a checkpoint is a folder holding config.json and *.safetensors)" if path.exists() \
            else "no such directory"
        raise CheckpointError(f"{model}: {why}")
    if model.count("/") != 1 or path.exists():
        close = difflib.get_close_matches(model.lower(), [*cards.aliases(), *(n.lower() for n in cards.card_names())], 1)
        if close:       # a typo: the suggestion, and where the cards are, not the whole list
            raise CheckpointError(f"unknown model {model!r} (did you mean {close[0]!r}?): not a model card or alias "
                                  f"(the {len(cards.card_names())} cards are in {cards.cards_dir()}), not a directory, "
                                  f"and not a hub id of the form org/name")
        raise CheckpointError(f"unknown model {model!r}: not a model card ({', '.join(cards.card_names())}) or "
                              f"alias ({', '.join(cards.aliases())}), not a directory, and not a hub id of the form "
                              f"org/name")
    folder = _download(model)
    return _read_json(folder / "config.json"), folder


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_config(model: str) -> tuple[ModelConfig, Path | None]:
    """--model -> (ModelConfig, folder); stop ids from config.json and generation_config.json together."""
    hf, folder = resolve(model)
    cfg = config_from_hf(hf)
    gen_cfg = folder / "generation_config.json" if folder is not None else None
    if gen_cfg is not None and gen_cfg.exists():
        eos = _read_json(gen_cfg).get("eos_token_id")
        extra = eos if isinstance(eos, list) else ([] if eos is None else [eos])
        cfg = dataclasses.replace(cfg, eos_token_ids=tuple(dict.fromkeys([*cfg.eos_token_ids, *extra])))
    return cfg, folder


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=offline))
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise CheckpointError(f"{repo_id} is not in the local Hugging Face cache and {why}") from e
    except Exception as e:  # network failures, gated or missing repos: say which, briefly
        raise CheckpointError(f"could not fetch {repo_id} from the Hugging Face hub: {type(e).__name__}: {e}") from e


class Checkpoint:
    """The safetensors files of a directory, opened lazily; `shape` reads only headers.

    Which files: the index's weight map if there is one; else `model.safetensors` alone if it
    exists (a stray `model_old.safetensors` beside it is never read, as in transformers); else every
    `*.safetensors`, refusing a tensor name that two files both hold."""

    def __init__(self, folder: Path, device: str = "cpu"):
        from safetensors import safe_open
        self._open, self.device, self.folder = safe_open, str(device), folder
        index = folder / "model.safetensors.index.json"
        self.handles = {}
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index} has no weight_map")
            self.where = {name: folder / f for name, f in weight_map.items()}
            return
        single = folder / "model.safetensors"
        files = [single] if single.exists() else sorted(folder.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise CheckpointError(f"no *.safetensors files in {folder}" + (
                f" ({pickles[0]} is a pickle checkpoint, which minimoe never loads: it can run code; convert it "
                f"to safetensors where you trust it)" if pickles else ""))
        self.where = {}
        for f in files:
            for name in self._file(f).keys():
                if name in self.where:
                    raise CheckpointError(f"{name} is in both {self.where[name].name} and {f.name} and there is "
                                          "no model.safetensors.index.json to say which to load")
                self.where[name] = f

    def _file(self, f: Path):
        if f not in self.handles:
            if not f.exists():
                raise CheckpointError(f"{f.name}, named by the index, is missing")
            try:
                self.handles[f] = self._open(f, "pt", device=self.device)
            except Exception as e:      # safetensors' SafetensorError: truncated, empty, not safetensors
                raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
        return self.handles[f]

    def _handle(self, name: str):
        f = self.where[name]
        if not f.exists():
            raise CheckpointError(f"{f.name}, named by the index for {name}, is missing")
        h = self._file(f)
        if name not in h.keys():
            raise CheckpointError(f"{f.name} does not hold {name}, which the index says it does")
        return h

    def shape(self, name: str) -> list[int]:
        return list(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str, index: tuple = ()) -> torch.Tensor:
        """The tensor, or only `index` (a tuple of slices) of it: the rest is never read from disk."""
        try:
            h = self._handle(name)
            return h.get_slice(name)[index] if index else h.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{self.where[name]}: cannot read {name} ({e})") from None


class StateDict:
    """An in-memory {name: tensor} (e.g. a transformers model's state_dict) seen as a checkpoint."""

    def __init__(self, tensors: dict):
        self.tensors, self.where = tensors, dict.fromkeys(tensors)

    def shape(self, name: str) -> list[int]:
        return list(self.tensors[name].shape)

    def get(self, name: str, index: tuple = ()) -> torch.Tensor:
        t = self.tensors[name]
        return t[index] if index else t
