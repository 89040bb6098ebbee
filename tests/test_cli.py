"""Guards `python -m minimoe generate`: it runs every tiny card (JSON and text output), and bad input exits with status 2 and one clear `error:` line on stderr, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY_CARDS
import torch

from minimoe import cards
from minimoe import settings as run_settings
from minimoe.__main__ import main


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["generate", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("card", TINY_CARDS)
def test_generate_json_on_each_tiny_card(card, capsys):
    rc, out, err = run(capsys, "--model", card, "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "5",
                       "--batch", "2", "--json", "-")
    assert rc == 0, err
    got = json.loads(out)
    assert got["model"] == card and got["prompt_ids"] == [3, 1, 4, 1, 5]
    assert len(got["new_ids"]) == 2 and all(len(row) == 5 for row in got["new_ids"])
    assert got["new_ids"][0] == got["new_ids"][1]              # same prompt, greedy: same tokens
    vocab = cards.load_card(card)["vocab_size"]
    assert all(isinstance(t, int) and 0 <= t < vocab for t in got["new_ids"][0])


def test_generate_text_output_prints_one_row_per_sequence(capsys):
    rc, out, _ = run(capsys, "--model", "olmoe-tiny", "--prompt-ids", "1,2,3", "--max-new-tokens", "4",
                     "--batch", "3", "--dtype", "fp32")
    assert rc == 0
    rows = out.strip().splitlines()
    assert len(rows) == 3 and all(len(r.split()) == 4 for r in rows)


def test_stop_ids_cut_each_row_at_its_first_stop(capsys):
    """--stop-ids: each row ends at (and keeps) its first id from the list; the rows before it are the free run's."""
    args = ["--model", "olmoe-tiny", "--prompt-ids", "3,1,4", "--max-new-tokens", "10", "--dtype", "fp32", "--json", "-"]
    free = json.loads(run(capsys, *args)[1])["new_ids"][0]
    stop = free[4]
    rc, out, err = run(capsys, *args, "--stop-ids", f"{stop},{stop}")
    assert rc == 0, err
    got = json.loads(out)["new_ids"][0]
    assert got == free[:free.index(stop) + 1] and len(got) <= 5


def test_sampling_is_seeded(capsys):
    args = ["--model", "qwen3-moe-tiny", "--prompt-ids", "7,8,9", "--max-new-tokens", "12", "--temperature", "1.5",
            "--top-k", "50", "--json", "-"]
    got = json.loads(run(capsys, *args, "--seed", "3")[1])
    first = got["new_ids"]
    assert first == json.loads(run(capsys, *args, "--seed", "3")[1])["new_ids"]
    assert first != json.loads(run(capsys, *args, "--seed", "4")[1])["new_ids"]
    # the JSON records the sampling (apart from the router's K in settings) and --gamma as a number
    assert got["sampling"] == {"temperature": 1.5, "top_k": 50, "top_p": 1.0, "min_p": 0.0}
    assert got["settings"]["top_k"] is None and got["settings"]["gamma"] == 0


def test_a_sampling_filter_alone_samples_at_temperature_1(capsys):
    """--top-k without --temperature samples (temperature 1.0, as vLLM and transformers) instead of silently decoding
    greedily: two seeds differ, and the run equals the one with --temperature 1 given."""
    args = ["--model", "qwen3-moe-tiny", "--prompt-ids", "7,8,9", "--max-new-tokens", "12", "--top-k", "50",
            "--json", "-"]
    first = json.loads(run(capsys, *args, "--seed", "3")[1])["new_ids"]
    assert first == json.loads(run(capsys, *args, "--seed", "3", "--temperature", "1")[1])["new_ids"]
    assert first != json.loads(run(capsys, *args, "--seed", "4")[1])["new_ids"]
    rc, _, err = run(capsys, *args[:-2], "--seed", "3")
    assert rc == 0 and "new tokens in" in err and "tok/s" in err                   # the summary line, on stderr


BAD_INPUT = {
    "unknown_model": (["--model", "no-such-model", "--prompt-ids", "1"], "unknown model 'no-such-model'"),
    "max_new_tokens_0": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--max-new-tokens", "0"],
                         "--max-new-tokens must be at least 1, got 0"),
    "batch_0": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--batch", "0"], "--batch must be at least 1, got 0"),
    "prompt_ids_letters": (["--model", "olmoe-tiny", "--prompt-ids", "1,a,3"],
                           "--prompt-ids must be comma-separated integers, got '1,a,3'"),
    "prompt_id_too_large": (["--model", "olmoe-tiny", "--prompt-ids", "1,512"],
                            "prompt token id 512 is outside the vocabulary [0, 512)"),
    "prompt_id_negative": (["--model", "olmoe-tiny", "--prompt-ids=4,-1"],
                           "prompt token id -1 is outside the vocabulary [0, 512)"),
    "empty_prompt": (["--model", "olmoe-tiny", "--prompt-ids", ""], "a prompt is empty: give at least one token"),
    "missing_model_dir": (["--model", "./no-such-ckpt", "--prompt-ids", "1"], "./no-such-ckpt: no such directory"),
    "fused_on_cpu": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--experts", "fused", "--device", "cpu"],
                     "--experts fused needs Triton on a CUDA GPU (or TRITON_INTERPRET=1 for tests)"),
    "greedy_and_temperature": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--greedy", "--temperature", "0.7"],
                               "--greedy contradicts --temperature/--top-k/--top-p/--min-p"),
    "unknown_expert_path": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--experts", "nope"],
                            "--experts nope: choose from loop, grouped, fused"),
    "top_p_zero": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--top-p", "0"], "--top-p must be in (0, 1]"),
    "top_k_negative": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--top-k", "-3"],
                       "--top-k must be an int >= 0 (0 is off), got -3"),
    "filter_at_temperature_0": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--temperature", "0", "--top-k", "5"],
                                "--top-k / --top-p / --min-p filter a sampled distribution, but --temperature 0 is greedy"),
    "greedy_and_top_k": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--greedy", "--top-k", "5"],
                         "--greedy contradicts --temperature/--top-k/--top-p/--min-p"),
    "prompt_text_without_tokenizer": (["--model", "olmoe-tiny", "--prompt", "hello"],
                                      "--prompt/--prompt-file need a checkpoint with tokenizer files"),
    "json_folder_missing": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--json", "/no/such/dir/x.json"],
                            "--json /no/such/dir/x.json: the folder /no/such/dir does not exist"),
    "json_is_a_folder": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--json", "/tmp"],
                         "--json /tmp is a folder: give a file name in it"),
    "prompt_file_missing": (["--model", "olmoe-tiny", "--prompt-file", "/no/such/prompts.txt"],
                            "--prompt-file /no/such/prompts.txt: no such file"),
    "prompt_file_without_tokenizer": (["--model", "olmoe-tiny", "--prompt-file", __file__],
                                      "--prompt/--prompt-file need a checkpoint with tokenizer files"),
    "router_on_a_dense_model": (["--model", "qwen3-stdlib-draft", "--prompt-ids", "1", "--router", "zipf"],
                                "--router zipf needs an MoE model"),
    "synthetic_router_with_a_draft": (["--model", "olmoe-stdlib", "--prompt-ids", "1", "--router", "balanced",
                                       "--draft", "qwen3-stdlib-draft", "--gamma", "2"],
                                      "greedy speculation stops being exact: add --draft-accept A"),
    "missing_weights_dir": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--weights", "/no/such/dir"],
                            "weights directory /no/such/dir does not exist"),
    "stop_ids_letters": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--stop-ids", "4,x"],
                         "--stop-ids must be comma-separated integers, got '4,x'"),
    "stop_id_too_large": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--stop-ids", "512"],
                          "--stop-ids: id 512 (ids must lie in the vocabulary [0, 512))"),
    "stop_ids_empty": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--stop-ids", " "],
                       "--stop-ids: no id given"),
    "stop_ids_empty_item": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--stop-ids", "4,,7"],
                            "--stop-ids must be comma-separated integers, got '4,,7'"),
    "prompt_ids_empty_item": (["--model", "olmoe-tiny", "--prompt-ids", "1,2,"],
                              "--prompt-ids must be comma-separated integers, got '1,2,'"),
    "seed_too_large": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--seed", "99999999999999999999"],
                       "--seed must be an int in [0, 2**63), got 99999999999999999999"),
    "seed_negative": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--seed", "-1"],
                      "--seed must be an int in [0, 2**63), got -1"),
    "device_cpu_index": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--device", "cpu:1"],
                         "--device cpu:1: the CPU is one device: give cpu"),
    "dispatch_without_ep": (["--model", "olmoe-tiny", "--prompt-ids", "1", "--dispatch", "padded"],
                            "--dispatch padded is expert parallelism's token exchange: it needs --ep 2 or more"),
}


@pytest.mark.parametrize("command", ["eval", "prune"])
def test_a_draft_model_outside_decoding_is_refused(command, capsys, tmp_path):
    extra = ["--method", "gate", "--ratio", "0.25", "--out", str(tmp_path / "p")] if command == "prune" else []
    rc = main([command, "--model", "olmoe-tiny", "--draft", "olmoe-tiny", "--gamma", "2", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--draft is a decoding setting" in err[0], err
    rc = main([command, "--model", "olmoe-tiny", "--draft-accept", "0.5", *extra])   # any one of them, alone
    assert rc == 2 and "--draft-accept is a decoding setting" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    assert "--dtype" in shown and "[--draft" not in shown and "[--gamma" not in shown


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "olmoe-tiny", "--prompt-ids", "1", "--bogus"],
     "python -m minimoe generate: error: unrecognized arguments: --bogus"),
    (["generate", "--prompt-ids", "1"], "python -m minimoe generate: error: the following arguments are required: --model"),
    (["prune", "--model", "olmoe-tiny", "--ratio", "abc", "--out", "x"],
     "python -m minimoe prune: error: argument --ratio: invalid float value: 'abc'"),
    (["eval", "--model", "olmoe-tiny", "--window", "w"], "python -m minimoe eval: error: argument --window"),
    (["nosuch"], "python -m minimoe: error: argument command: invalid choice: 'nosuch'"),
    (["eval", "--model", "olmoe-tiny", "--wind", "8"], "python -m minimoe eval: error: unrecognized arguments: --wind"),
])
def test_argparse_errors_are_one_line(argv, message, capsys):
    """argparse's own refusals (unknown flag, missing or mistyped argument, every subcommand) come as one line on
    stderr and exit status 2, without the usage block argparse prints by default (cli.ArgumentParser)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert e.value.code == 2 and out == "" and len(lines) == 1 and lines[0].startswith(message), err
    assert "--help: the flags" in lines[0]


def test_cpu_device_index_0_is_the_cpu():
    assert run_settings.pick_device("cpu:0") == torch.device("cpu")


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2_with_one_line(case, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)      # another test file may set it
    args, message = BAD_INPUT[case]
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


def test_uncached_hub_id_offline_exits_2(capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "--model", "minimoe-tests/never-cached", "--prompt-ids", "1")
    assert rc == 2
    assert err.strip() == ("error: minimoe-tests/never-cached is not in the local Hugging Face cache and "
                           "HF_HUB_OFFLINE is set")


def test_unknown_model_type_exits_2(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    rc, _, err = run(capsys, "--model", str(tmp_path), "--prompt-ids", "1")
    assert rc == 2 and "unsupported model_type 'gpt2'" in err


def test_too_long_generation_exits_2(capsys):
    rc, _, err = run(capsys, "--model", "olmoe-tiny", "--prompt-ids", "1,2", "--max-new-tokens", "5000")
    assert rc == 2 and "max_position_embeddings 2048" in err


def test_module_entry_point_exit_status():
    """The real `python -m minimoe` process: sys.exit carries main's status."""
    proc = subprocess.run([sys.executable, "-m", "minimoe", "generate", "--model", "olmoe-tiny", "--prompt-ids",
                           "1", "--max-new-tokens", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --max-new-tokens must be at least 1, got 0"


STDLIB = ["--model", "olmoe-stdlib", "--max-new-tokens", "2"]


@pytest.mark.parametrize("content, message", [
    (b"def f():\n\nclass A:\n", "line 2 is blank (one prompt per line"),
    (b"\n  \n", "no prompt in it"),
    (b"def \xff\n", "is not UTF-8 text: invalid start byte at byte 4"),
])
def test_prompt_file_problems_are_one_line(content, message, capsys, tmp_path):
    """A blank line used to be dropped silently (output rows no longer matched the file's lines), and a file that
    is not UTF-8 was reported without its name."""
    from minimoe.cards import cards_dir
    if not (cards_dir() / "olmoe-stdlib" / "tokenizer.json").exists():
        pytest.skip("olmoe-stdlib has no tokenizer in this checkout")
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    rc, out, err = run(capsys, *STDLIB, "--prompt-file", str(path))
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and message in lines[0] and str(path) in lines[0], err


def test_prompt_and_data_that_are_not_utf8_are_one_line(capsys, tmp_path):
    """A --prompt whose argv bytes are not UTF-8 (Latin-1 'caf\\xe9', as an old terminal sends it) reaches Python as a
    lone surrogate: it was a tokenizer TypeError traceback. eval's --data gave the codec's raw message."""
    from minimoe.cards import cards_dir
    if not (cards_dir() / "olmoe-stdlib" / "tokenizer.json").exists():
        pytest.skip("olmoe-stdlib has no tokenizer in this checkout")
    latin1 = b"caf\xe9".decode("utf-8", "surrogateescape")           # what sys.argv holds for those bytes
    rc, out, err = run(capsys, *STDLIB, "--prompt", latin1)
    assert (rc, out, err.strip()) == (2, "", "error: --prompt is not UTF-8 text: byte 0xe9 at byte 3"), err
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait\n")
    rc = main(["eval", "--model", "olmoe-stdlib", "--data", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"error: --data {path} is not UTF-8 text: invalid continuation byte at byte 3"


def test_prompt_file_trailing_blank_lines_end_the_file(capsys, tmp_path):
    from minimoe.cards import cards_dir
    if not (cards_dir() / "olmoe-stdlib" / "tokenizer.json").exists():
        pytest.skip("olmoe-stdlib has no tokenizer in this checkout")
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"def f(\x0cx):\r\nclass A:\n\n\n")                      # a form feed stays inside its line
    rc, out, err = run(capsys, *STDLIB, "--prompt-file", str(path), "--json", "-")
    assert rc == 0 and len(json.loads(out)["new_ids"]) == 2, err
    rc, out, err = run(capsys, *STDLIB, "--prompt-file", str(path))          # text: each under its prompt's number
    assert rc == 0 and [ln for ln in out.splitlines() if ln.startswith("# prompt")] == ["# prompt 0", "# prompt 1"]


def test_prompt_file_may_be_a_pipe_and_paths_expand_the_home(capsys, tmp_path, monkeypatch):
    """`--prompt-file <(...)` reads a FIFO (a check for regular files refused it); `--json=~/x` (no shell
    expansion after '=') writes under $HOME, as the check before the run saw it."""
    import os
    import threading
    from minimoe.cards import cards_dir
    if not (cards_dir() / "olmoe-stdlib" / "tokenizer.json").exists():
        pytest.skip("olmoe-stdlib has no tokenizer in this checkout")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: fifo.write_text("def f(x):\n"), daemon=True).start()
    monkeypatch.setenv("HOME", str(tmp_path))
    rc, out, err = run(capsys, *STDLIB, "--prompt-file", str(fifo), "--json=~/g.json")
    assert rc == 0 and len(json.loads((tmp_path / "g.json").read_text())["new_ids"]) == 1, err
    rc, out, err = run(capsys, *STDLIB, "--prompt-file", str(tmp_path))
    assert rc == 2 and f"--prompt-file {tmp_path}: is a folder" in err


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`generate ... | head -1`: a BrokenPipeError traceback and exit 1 before; now the closed pipe's 141, no
    traceback."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "minimoe", "generate", "--model", "olmoe-tiny", "--prompt-ids",
                             "1,2,3", "--batch", "64", "--max-new-tokens", "32"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                                  # nobody reads: the first print meets a closed pipe
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()[-2000:]


def test_a_plot_without_matplotlib_is_refused_before_the_work(capsys, monkeypatch, tmp_path):
    """Without the [plot] extra, eval --heatmap and bench.py --plot / --load-heatmap ran everything first."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    from minimoe.bench.cli import main as bench_main
    for argv in (["--plot", str(tmp_path / "p.png")], ["--load-heatmap", str(tmp_path / "h.png")]):
        capsys.readouterr()
        rc = bench_main(["--model", "olmoe-tiny", "--device", "cpu", *argv])
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and "draws with matplotlib, which is not installed" in err, err
    capsys.readouterr()
    rc = main(["eval", "--model", "olmoe-stdlib", "--heatmap", str(tmp_path / "e.png")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "--heatmap draws with matplotlib" in err, err


def test_zipf_s_without_the_zipf_router_is_refused(capsys):
    """generate / eval / prune read the settings through settings.from_args: --zipf-s alone would be ignored."""
    capsys.readouterr()
    rc = main(["generate", "--model", "olmoe-tiny", "--prompt-ids", "1,2", "--max-new-tokens", "1", "--zipf-s", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "--zipf-s only means something with --router zipf" in err
    assert len(err.strip().splitlines()) == 1


def test_draft_weights_errors_name_the_flag(tmp_path, capsys):
    """A missing --draft-weights folder is refused before the target loads, naming the flag (not --weights')."""
    capsys.readouterr()
    rc = main(["generate", "--model", "olmoe-tiny", "--prompt-ids", "1,2", "--max-new-tokens", "2",
               "--draft", "olmoe-tiny", "--gamma", "2", "--draft-weights", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--draft-weights {tmp_path / 'none'}: no such directory" in err, err
