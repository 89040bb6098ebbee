"""Guards the small-model pipeline: stdlib split, shipped tokenizer, resumable tiny training, bits per byte."""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

transformers = pytest.importorskip("transformers")
import stdlib_corpus as corpus  # noqa: E402
import tiny_models  # noqa: E402
import train_tiny  # noqa: E402
from minimoe.evaluate import bits_per_byte, load_heldout, sliding_windows  # noqa: E402

# 1 layer, D 32: a run is a fraction of a second; every family quirk of the real sizes is kept
TINY = {
    "olmoe-stdlib": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=16, intermediate_size=16, num_experts=4, num_experts_per_tok=2),
    "mixtral-stdlib": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=16, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2),
    "qwen3-stdlib-draft": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                               head_dim=16, intermediate_size=32),
}


@pytest.fixture(scope="module")
def docs():
    return corpus.read_stdlib()


@pytest.fixture(scope="module")
def tiny_data(docs):
    """~40 train files and the first ~6 KB of the held-out text, tokenized as train_tiny does it."""
    tok = corpus.load_backend()
    train, _ = corpus.split(docs)
    picked = [train[rel] for rel in sorted(train, key=corpus.path_hash)[:40]]
    text = load_heldout(corpus.HELDOUT_PATH)[:6000]
    heldout = torch.tensor([0] + tok.encode(text, add_special_tokens=False).ids, dtype=torch.int32)
    return dict(train=corpus.encode_documents(tok, picked), heldout=heldout, heldout_bytes=len(text.encode()))


def test_split_is_a_stable_disjoint_hash_of_the_path(docs):
    assert corpus.is_heldout("textwrap.py") and corpus.is_heldout("email/policy.py")
    assert not corpus.is_heldout("os.py") and not corpus.is_heldout("json/decoder.py")
    train, heldout = corpus.split(docs)
    assert set(train).isdisjoint(heldout) and set(train) | set(heldout) == set(docs)
    assert 0.015 < len(heldout) / len(docs) < 0.05
    assert list(train) == sorted(train)
    assert corpus.split(docs) == (train, heldout)


def test_shipped_heldout_text_is_held_out_here(docs):
    text = load_heldout(corpus.HELDOUT_PATH)
    assert 200_000 < len(text.encode()) <= corpus.HELDOUT_BYTES
    parts = text.split(corpus.EOT)
    by_text = {t: rel for rel, t in docs.items()}
    found = [by_text[p] for p in parts if p in by_text]
    assert all(corpus.is_heldout(rel) for rel in found)
    if sys.version_info[:2] == (3, 11):           # the Python it was cut from: every part is a file
        assert len(found) == len(parts) >= 10
    train, _ = corpus.split(docs)
    kept, _ = corpus.decontaminate(train, text)
    assert not set(parts) & set(kept.values())


def test_tokenizer_round_trips_and_matches_the_backend(docs):
    tok = transformers.AutoTokenizer.from_pretrained(corpus.TOKENIZER_DIR)
    assert tok.is_fast and len(tok) == 4096
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 0
    assert tok(corpus.EOT).input_ids == [0]
    text = docs["textwrap.py"] + "\r\n\tcafé 日本 \U0001F600  x  \n"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert ids == corpus.load_backend().encode(text, add_special_tokens=False).ids
    assert len(text.encode()) / len(ids) > 2.5          # it learned Python, not just bytes


def test_sliding_windows_score_every_token_once():
    for n, window, stride in [(1, 4, 2), (2, 4, 2), (10, 4, 2), (11, 4, 3), (100, 16, 15), (5, 8, 4)]:
        scored = []
        for start, end, first in sliding_windows(n, window, stride):
            assert 0 <= start < first <= end <= n and end - start == min(window, n)
            scored += range(first, end)
        assert scored == list(range(1, n))
    with pytest.raises(ValueError, match="stride < window"):
        sliding_windows(10, 4, 4)


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_per_token():
    V, ids = 50, torch.arange(37) % 7
    res = bits_per_byte(lambda b: torch.zeros(*b.shape, V), ids, text_bytes=74, window=8, stride=3)
    assert res["tokens_scored"] == 36
    assert res["loss"] == pytest.approx(math.log(V))
    assert res["bpb"] == pytest.approx(36 * math.log2(V) / 74)


def tiny_cfg(steps: int, **kw):
    base = tiny_models.PRESETS["cpu"]
    return replace(base, steps={n: steps for n in tiny_models.MODELS}, batch=2, seq_len=32, warmup=2,
                   eval_every=2, eval_tokens=128, eval_batch=8, time_budget_s=1e9, **kw)


def run(name, cfg, tiny_data, folder: Path) -> dict:
    return train_tiny.train_model(name, "cpu", cfg, tiny_data, torch.device("cpu"), folder, folder / "state",
                                  corpus.TOKENIZER_DIR, overrides=TINY[name])


def test_tiny_run_resumes_exactly_and_reloads(tiny_data, tmp_path):
    torch.set_num_threads(1)
    first = run("olmoe-stdlib", tiny_cfg(5, stop_step=3), tiny_data, tmp_path / "a")
    assert first["steps"] == 3 and first["resumed_from"] == 0
    resumed = run("olmoe-stdlib", tiny_cfg(5), tiny_data, tmp_path / "a")
    assert resumed["resumed_from"] == 3 and resumed["steps"] == 5 and resumed["tokens_seen"] == 5 * 2 * 32
    straight = run("olmoe-stdlib", tiny_cfg(5), tiny_data, tmp_path / "b")
    from safetensors.torch import load_file
    a = load_file(tmp_path / "a" / "olmoe-stdlib" / "model.safetensors")
    b = load_file(tmp_path / "b" / "olmoe-stdlib" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["heldout"]["bpb"] == straight["heldout"]["bpb"]

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "olmoe-stdlib", dtype=torch.float32)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 0

    def logits_fn(batch):
        return model(input_ids=batch, use_cache=False).logits

    args = (tiny_data["heldout"], tiny_data["heldout_bytes"], 32, 16)
    once, twice = bits_per_byte(logits_fn, *args), bits_per_byte(logits_fn, *args)
    assert once == twice
    assert once["bpb"] == pytest.approx(resumed["heldout"]["bpb"], rel=1e-6)   # the shipped bf16 weights


@pytest.mark.parametrize("name", ["mixtral-stdlib", "qwen3-stdlib-draft"])
def test_other_families_train_save_and_generate(name, tiny_data, tmp_path):
    torch.set_num_threads(1)
    log = run(name, tiny_cfg(2), tiny_data, tmp_path)
    assert log["steps"] == 2 and math.isfinite(log["heldout"]["bpb"])
    folder = tmp_path / name
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.bfloat16 and type(model).__name__ == tiny_models.MODELS[name][0]
    out = model.generate(tok("def ", return_tensors="pt").input_ids, max_new_tokens=5, do_sample=False)
    assert tok.decode(out[0]).startswith("def ")


def test_h200_models_fit_25_mb_and_the_baseline_matches_active_params(tmp_path):
    torch.set_num_threads(1)
    total, counts = 0, {}
    for name, (_, shipped, _) in tiny_models.MODELS.items():
        model = tiny_models.build_model(name, "h200")
        counts[name] = tiny_models.param_counts(model)
        cfg = model.config
        assert (cfg.eos_token_id, cfg.bos_token_id, cfg.max_position_embeddings, cfg.hidden_act) == (0, 0, 2048, "silu")
        if shipped:
            total += train_tiny.export(model, tmp_path / name, corpus.TOKENIZER_DIR)
    assert total <= 25_000_000
    olmoe, dense = counts["olmoe-stdlib"], counts["dense-stdlib-baseline"]
    assert abs(dense["active"] - olmoe["active"]) / olmoe["active"] < 0.01 < 1 - olmoe["active"] / olmoe["total"]
