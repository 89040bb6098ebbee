"""Guards request handling against transformers: ragged prompt batches give every prompt exactly its own
greedy tokens (loop, grouped and interpreted fused experts), stop ids from config.json and
generation_config.json end each sequence on its own, and length guards count the positions that run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import FAMILIES, VOCAB
from minimoe.__main__ import main
from minimoe.generate import Generator
from minimoe.loader import build_model, read_config
from minimoe.settings import RunSettings

pytest.importorskip("transformers")

LENGTHS = (1, 5, 17)
N_NEW = 6


def _prompts(seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def _hf_alone(hf, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("experts", ["loop", "grouped", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_batch_gives_each_prompt_its_own_tokens(family, experts, hf_checkpoint):
    if experts == "fused":
        pytest.importorskip("triton")
    folder, hf = hf_checkpoint(family)
    s = RunSettings(experts=experts, device="cpu")
    model, _, _ = build_model(str(folder), "auto", dtype=torch.float32, settings=s)
    prompts = _prompts(seed=FAMILIES.index(family))
    batch = Generator(model, len(prompts), max(LENGTHS) + N_NEW).generate(prompts, N_NEW)
    for b, p in enumerate(prompts):
        alone = Generator(model, 1, len(p) + N_NEW).generate([p], N_NEW)
        assert batch[b].tolist() == alone[0].tolist(), f"prompt of {len(p)} tokens"
        if experts == "loop":
            assert alone[0].tolist() == _hf_alone(hf, p, N_NEW)


def _with_stop_ids(src, dst, config_eos, generation_eos=None):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["eos_token_id"] = config_eos
    (dst / "config.json").write_text(json.dumps(cfg))
    gen_cfg = dst / "generation_config.json"
    if generation_eos is None:
        gen_cfg.unlink(missing_ok=True)
    else:
        gen_cfg.write_text(json.dumps({"eos_token_id": generation_eos}))
    return dst


def test_every_stop_id_stops_like_transformers(hf_checkpoint, tmp_path):
    """eos_token_id [a, b] in config.json: the sequence stops at b, as transformers' generate does."""
    import transformers
    folder, hf = hf_checkpoint("qwen3_moe")
    prompt = [3, 1, 4, 1, 5]
    free = _hf_alone(hf, prompt, 12)
    stop = free[2]                                                   # emitted at the third step
    other = next(t for t in range(VOCAB) if t not in free)
    edited = _with_stop_ids(folder, tmp_path / "stops", [other, stop])
    cfg, _ = read_config(str(edited))
    assert set(cfg.eos_token_ids) == {other, stop}
    ref = transformers.AutoModelForCausalLM.from_pretrained(edited, dtype=torch.float32)
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    assert want[-1] == stop and len(want) == 3
    model, cfg, _ = build_model(str(edited), "auto", dtype=torch.float32)
    got = Generator(model, 1, 20).generate([prompt], 12, stop_ids=cfg.eos_token_ids)[0].tolist()
    assert got[:3] == want and all(t == min(cfg.eos_token_ids) for t in got[3:])


def test_generation_config_adds_stop_ids(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("olmoe")
    edited = _with_stop_ids(folder, tmp_path / "genstops", 5, generation_eos=[7, 5])
    assert set(read_config(str(edited))[0].eos_token_ids) == {5, 7}


def test_each_sequence_stops_on_its_own(hf_checkpoint):
    folder, hf = hf_checkpoint("mixtral")
    model, _, _ = build_model(str(folder), "auto", dtype=torch.float32)
    prompts = _prompts(seed=7)
    free = Generator(model, 3, 40).generate(prompts, 10)
    stop = int(free[1, 4])                                           # sequence 1 emits it at step 5
    got = Generator(model, 3, 40).generate(prompts, 10, stop_ids={stop})
    for row_free, row in zip(free.tolist(), got.tolist()):
        cut = row_free.index(stop) + 1 if stop in row_free else 10
        assert row[:cut] == row_free[:cut] and all(t == stop for t in row[cut:])


def test_cli_prompt_file_and_stop_at_eos(hf_checkpoint, tmp_path, capsys):
    """--prompt-ids with --stop-at-eos prints only up to the stop id; counts positions that really run."""
    folder, hf = hf_checkpoint("qwen3_moe")
    prompt = [3, 1, 4, 1, 5]
    stop = _hf_alone(hf, prompt, 4)[2]
    edited = _with_stop_ids(folder, tmp_path / "cli", stop)
    rc = main(["generate", "--model", str(edited), "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "12",
               "--stop-at-eos", "--json", "-"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["new_ids"][0][-1] == stop and len(out["new_ids"][0]) == 3


def test_length_guard_counts_the_positions_that_run(tmp_path, capsys):
    """12 prompt tokens + 4 new ones run 15 positions (the last token is never fed back): fits 15."""
    card = json.loads(open(__import__("minimoe").cards.find_card("olmoe-tiny")).read())
    card["max_position_embeddings"] = 15
    (tmp_path / "config.json").write_text(json.dumps(card))
    ids = ",".join(["1"] * 12)
    args = ["generate", "--model", str(tmp_path), "--weights", "dummy", "--prompt-ids", ids, "--json", "-"]
    assert main(args + ["--max-new-tokens", "4"]) == 0
    assert len(json.loads(capsys.readouterr().out)["new_ids"][0]) == 4
    assert main(args + ["--max-new-tokens", "5"]) == 2
    assert "need 16 positions, more than the model's max_position_embeddings 15" in capsys.readouterr().err
