"""Guards the small trained models shipped in models/: minimoe and transformers agree on their real weights
(64 greedy tokens, logits within 1e-4 in fp32), and `python -m minimoe eval` scores the shipped held-out text
deterministically, at the bits per byte the training run reported (docs/train/train_log.json)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import rel_err
from minimoe.__main__ import main
from minimoe.cards import cards_dir
from minimoe.gate import SkipCount
from minimoe.generate import Generator
from minimoe.loader import build_model

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("olmoe-stdlib", "mixtral-stdlib", "qwen3-stdlib-draft")
PROMPT = 'import os\n\n\ndef join(a, *p):\n    """Join two or more pathname components."""\n'


@pytest.fixture(scope="module", params=SHIPPED)
def pair(request):
    folder = cards_dir() / request.param
    if not (folder / "model.safetensors").exists():
        pytest.skip(f"{request.param} is not trained in this checkout")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    net, cfg, _ = build_model(request.param, "auto", dtype=torch.float32)
    return request.param, tok, hf, net


def test_logits_and_64_greedy_tokens_match_transformers(pair):
    name, tok, hf, net = pair
    ids = torch.tensor([[0] + tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        ref = hf(ids).logits
        want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                           eos_token_id=None)[0, ids.shape[1]:]
    ours = Generator(net, 1, ids.shape[1] + 64).append(ids)
    assert rel_err(ours, ref) <= 1e-4, name
    got = Generator(net, 1, ids.shape[1] + 64).generate(ids, 64)[0]
    assert got.tolist() == want.tolist(), name


def test_the_moe_target_beats_the_dense_model_of_its_active_size():
    log = json.loads((ROOT / "docs" / "train" / "train_log.json").read_text())["models"]
    moe, dense = log["olmoe-stdlib"], log["dense-stdlib-baseline"]
    assert abs(moe["params"]["active"] - dense["params"]["active"]) <= 0.01 * dense["params"]["active"]
    assert moe["tokens_seen"] == dense["tokens_seen"]
    assert moe["heldout"]["bpb"] < dense["heldout"]["bpb"]


def _eval(capsys, *extra) -> dict:
    assert main(["eval", "--model", "olmoe-stdlib", "--json", "-", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_is_deterministic_and_matches_the_training_report(capsys):
    if not (cards_dir() / "olmoe-stdlib" / "model.safetensors").exists():
        pytest.skip("olmoe-stdlib is not trained in this checkout")
    first = _eval(capsys, "--max-bytes", "20000")
    again = _eval(capsys, "--max-bytes", "20000")
    assert first["bpb"] == again["bpb"] and first["tokens_scored"] == again["tokens_scored"] > 5000
    whole = _eval(capsys)
    trained = json.loads((ROOT / "docs" / "train" / "train_log.json").read_text())["models"]["olmoe-stdlib"]
    assert whole["bytes"] == trained["heldout"]["bytes"] and whole["tokens_scored"] == trained["heldout"]["tokens_scored"]
    # transformers scored the bf16 export in bf16 on the GPU; minimoe reads the same weights in fp32 here
    assert abs(whole["bpb"] - trained["heldout"]["bpb"]) <= 0.005


@pytest.mark.parametrize("extra,message", [
    (["--max-bytes", "0"], "--max-bytes must be at least 1, got 0"),
    (["--max-bytes", "-5"], "--max-bytes must be at least 1, got -5"),
    (["--data", "EMPTY"], "no text to score"),
    (["--json", "FOLDER"], "is a folder: give a file name in it"),
])
def test_eval_refuses_what_it_cannot_score_in_one_line(extra, message, capsys, tmp_path):
    """Before: --max-bytes 0 scored the whole file, -5 all but 5 bytes (a slice), an empty file divided by zero,
    and --json naming a folder failed after the whole run."""
    if not (cards_dir() / "olmoe-stdlib" / "tokenizer.json").exists():
        pytest.skip("olmoe-stdlib has no tokenizer in this checkout")
    (tmp_path / "empty.txt").write_text("")
    extra = [{"EMPTY": str(tmp_path / "empty.txt"), "FOLDER": str(tmp_path)}.get(a, a) for a in extra]
    capsys.readouterr()
    rc = main(["eval", "--model", "olmoe-stdlib", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_eval_heatmap_of_a_dense_model_is_refused(capsys, tmp_path):
    capsys.readouterr()
    rc = main(["eval", "--model", "qwen3-stdlib-draft", "--heatmap", str(tmp_path / "h.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is a dense model" in err[0], err
    assert not (tmp_path / "h.png").exists()


def _eval_load(monkeypatch, capsys, *extra):
    """eval's ExpertLoad after a run: its [L, E] counts."""
    import minimoe.evaluate_cli as ec
    made = []

    class Load(ec.ExpertLoad):
        @classmethod
        def of(cls, cfg, device):
            made.append(super().of(cfg, device))
            return made[-1]
    monkeypatch.setattr(ec, "ExpertLoad", Load)
    _eval(capsys, "--max-bytes", "1500", "--window", "64", "--stride", "16", *extra)
    return made[0].counts


def test_eval_counts_each_token_once_over_overlapping_windows(monkeypatch, capsys):
    """Windows of 64 moved by 16 hold most tokens four times; the load (heatmap, imbalance) counts each token's
    routing once, in the first window that holds it, also when a batch holds several windows (the router sees
    them as [B * S] rows)."""
    from minimoe.checkpoint import read_config
    cfg, folder = read_config("olmoe-stdlib")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = (ROOT / "models" / "stdlib-heldout.txt").read_bytes()[:1500].decode("utf-8", errors="ignore")
    n_tokens = 1 + len(tok(text, add_special_tokens=False)["input_ids"])          # the BOS eval puts first
    batched = _eval_load(monkeypatch, capsys, "--batch-size", "3")
    assert batched.sum(1).tolist() == [n_tokens * cfg.top_k] * cfg.n_layers
    alone = _eval_load(monkeypatch, capsys, "--batch-size", "1")
    assert (batched - alone).abs().sum() <= 2 * cfg.n_layers          # the same tokens counted (a near-tie may flip)
    import minimoe.evaluate_cli as ec
    seen = []
    monkeypatch.setattr(ec, "SkipCount", lambda *a: seen.append(SkipCount(*a)) or seen[-1])
    _eval_load(monkeypatch, capsys, "--batch-size", "3", "--skip-threshold", "0.5")
    assert seen[0].slots.tolist() == [n_tokens * cfg.top_k] * cfg.n_layers and int(seen[0].dropped.sum()) > 0


def test_eval_heatmap_takes_benchs_flag_name_and_says_where_it_went(capsys, tmp_path):
    path = tmp_path / "load.png"
    assert main(["eval", "--model", "olmoe-stdlib", "--max-bytes", "800", "--load-heatmap", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"# expert-load heatmap written to {path}" in capsys.readouterr().err.splitlines()
