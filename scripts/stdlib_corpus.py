"""The training corpus of minimoe's small models: the Python standard library's own source code.

Model weights cannot be downloaded here, so the small MoE models that quantization, pruning and
speculative decoding are measured on are trained on text every machine already has: the `*.py`
files under `sysconfig.get_paths()["stdlib"]` (site-packages skipped, files that are not UTF-8
skipped): 31 MB and 9.1M tokens for CPython 3.11 with its test suite. A Debian/Ubuntu Python ships
`test/` separately (the H200 machine's 3.12 has 10 MB, 3.0M tokens), which is why train_tiny.py can
also read a corpus tokenized on another machine (`--tokens`).

**The split is a hash of the relative path**, never a random draw: `sha1("json/decoder.py")` decides
once and for all, on every machine and every Python version, whether that file is held out (3%).
A path held out under 3.11 is held out under 3.12 too. What a path rule cannot see is a file that
*moved* between versions (3.12 moved `unittest/test/` to `test/test_unittest/`), so two guards:
the shipped held-out text takes no file from a directory known to move and no file that shares
much with the train split, and at training time every train file that shares half of its long
lines with the held-out text is dropped (decontamination, reported in the log).

**The held-out text is shipped** (`models/stdlib-heldout.txt`, written here once): held-out files
in hash order, joined by `<|endoftext|>`, cut at a file boundary near 300 KB, so a model trained on
3.12 and one trained on 3.11 are scored on the same bytes.

**The tokenizer is shipped too** (`models/stdlib-tokenizer/`): a byte-level BPE (GPT-2's scheme,
Radford et al. 2019) of 4,096 tokens trained on the train split, `<|endoftext|>` = id 0, loadable
by `transformers.AutoTokenizer`; every model shares it. Byte-level means any text round-trips.

    python scripts/stdlib_corpus.py          # (re)build models/stdlib-heldout.txt and the tokenizer
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

EOT = "<|endoftext|>"                  # document separator; token id 0, also bos/eos/pad of every model
HELDOUT_PER_MILLE = 30                 # 3% of paths held out
HELDOUT_BYTES = 300_000                # size of the shipped held-out text (cut at a file boundary)
MOVED_AFTER_3_11 = ("unittest/test/", "lib2to3/tests/", "distutils/tests/", "idlelib/idle_test/")
LONG_LINE = 30                         # stripped lines this long are specific enough to detect a copy
REPO = Path(__file__).resolve().parents[1]
HELDOUT_PATH = REPO / "models" / "stdlib-heldout.txt"
TOKENIZER_DIR = REPO / "models" / "stdlib-tokenizer"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_stdlib(root: Path | None = None) -> dict[str, str]:
    """relative posix path -> source text, sorted by path; site-packages and non-UTF-8 files skipped."""
    root = root or stdlib_root()
    docs = {}
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or "dist-packages" in rel.split("/"):
            continue
        try:
            docs[rel] = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
    return docs


def path_hash(rel: str) -> int:
    return int(hashlib.sha1(rel.encode("utf-8")).hexdigest()[:8], 16)


def is_heldout(rel: str) -> bool:
    return path_hash(rel) % 1000 < HELDOUT_PER_MILLE


def split(docs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(train, heldout), each in the sorted path order of `docs`."""
    train = {rel: text for rel, text in docs.items() if not is_heldout(rel)}
    heldout = {rel: text for rel, text in docs.items() if is_heldout(rel)}
    return train, heldout


def long_lines(text: str) -> set[str]:
    return {s for s in (line.strip() for line in text.splitlines()) if len(s) >= LONG_LINE}


def overlap(text: str, reference: set[str]) -> float:
    """Share of `text`'s distinct long lines that also occur in `reference` (0 when it has none)."""
    mine = long_lines(text)
    return len(mine & reference) / len(mine) if mine else 0.0


def decontaminate(train: dict[str, str], heldout_text: str, threshold: float = 0.5):
    """Drop train files sharing >= `threshold` of their long lines with the held-out text: a held-out
    file that moved to a new path between Python versions lands in train by its new path's hash."""
    reference = long_lines(heldout_text)
    dropped = [rel for rel, text in train.items() if overlap(text, reference) >= threshold]
    return {rel: t for rel, t in train.items() if rel not in set(dropped)}, dropped


def build_heldout_text(train: dict[str, str], heldout: dict[str, str], max_bytes: int = HELDOUT_BYTES,
                       max_overlap: float = 0.3) -> tuple[str, list[str]]:
    """Held-out files in hash order (a stable shuffle, so no one package dominates), skipping files that
    move after 3.11, tiny (< 1 KB) or huge (> 64 KB) files, and files whose lines the train split
    mostly has already; joined by EOT and stopped before `max_bytes`. Returns (text, paths)."""
    train_lines = set().union(*(long_lines(t) for t in train.values()))
    chosen, size = [], 0
    for rel in sorted(heldout, key=lambda r: (path_hash(r), r)):
        text = heldout[rel]
        n = len(text.encode("utf-8"))
        if rel.startswith(MOVED_AFTER_3_11) or not 1_000 <= n <= 64_000 or EOT in text:
            continue
        if overlap(text, train_lines) > max_overlap:
            continue
        if size + n + len(EOT) > max_bytes:
            break
        chosen.append(rel)
        size += n + len(EOT)
    return EOT.join(heldout[rel] for rel in chosen), chosen


def train_tokenizer(texts: list[str], vocab_size: int = 4096):
    """Byte-level BPE with EOT as id 0; the 256 byte symbols are always in, so nothing is unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    assert tok.token_to_id(EOT) == 0
    return tok


def save_tokenizer(tok, folder: Path) -> None:
    """tokenizer.json + the two small files `AutoTokenizer` reads; decoding keeps spaces as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"), pretty=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
              "pad_token": EOT, "unk_token": None, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 2048}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_backend(folder: Path = TOKENIZER_DIR):
    """The `tokenizers.Tokenizer` itself: batch encoding in Rust threads, no length warnings."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def encode_documents(tok, texts: list[str]):
    """Token ids of the texts, each followed by EOT (id 0), as one int16 tensor [N] (vocab < 2^15:
    half the bytes of int32, so a whole corpus travels light)."""
    import torch
    ids = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(0)
    return torch.tensor(ids, dtype=torch.int16)


def train_documents(heldout_text: str, max_bytes: int | None = None) -> tuple[dict[str, str], dict]:
    """This machine's train split, decontaminated against the held-out text; with `max_bytes`, a stable
    subset (hash order, cut at the cap, back in path order). Returns (documents, description)."""
    train, _ = split(read_stdlib())
    train, dropped = decontaminate(train, heldout_text)
    if max_bytes:
        keep, size = set(), 0
        for rel in sorted(train, key=path_hash):
            if size >= max_bytes:
                break
            keep.add(rel)
            size += len(train[rel])
        train = {rel: t for rel, t in train.items() if rel in keep}
    about = dict(python=sys.version.split()[0], stdlib=str(stdlib_root()), train_files=len(train),
                 train_bytes=sum(len(t.encode()) for t in train.values()), dropped_as_overlapping=dropped)
    return train, about


def fingerprint(tokenizer_dir: Path, heldout_text: str) -> dict:
    """What a token file must have been made with to be reused: this tokenizer, this held-out text."""
    return dict(tokenizer_sha1=hashlib.sha1((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest(),
                heldout_sha1=hashlib.sha1(heldout_text.encode()).hexdigest())


def write_tokens(path: Path, ids: dict, about: dict, prints: dict) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"          # concurrent writers: the last rename wins, both whole
    save_file(ids, tmp, metadata={"about": json.dumps(about), **prints})
    os.replace(tmp, path)


def read_tokens(path: Path, prints: dict) -> tuple[dict, dict]:
    """(ids, description) of a token file, refused if made with another tokenizer or held-out text."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        stale = {k: meta.get(k) for k in prints if meta.get(k) != prints[k]}
        if stale:
            raise SystemExit(f"{path} was made with another tokenizer or held-out text ({stale}); delete it")
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta["about"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heldout", type=Path, default=HELDOUT_PATH)
    ap.add_argument("--tokenizer", type=Path, default=TOKENIZER_DIR)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args(argv)
    docs = read_stdlib()
    train, heldout = split(docs)
    text, chosen = build_heldout_text(train, heldout)
    args.heldout.parent.mkdir(parents=True, exist_ok=True)
    args.heldout.write_bytes(text.encode("utf-8"))
    print(f"python {sys.version.split()[0]}: {len(docs)} files, {len(train)} train, {len(heldout)} held out; "
          f"{args.heldout}: {len(chosen)} files, {len(text.encode())} bytes", file=sys.stderr)
    train_docs, dropped = decontaminate(train, text)
    tok = train_tokenizer(list(train_docs.values()), args.vocab)
    save_tokenizer(tok, args.tokenizer)
    print(f"{args.tokenizer}: vocab {tok.get_vocab_size()} (train files dropped as overlapping: {dropped})",
          file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
