"""Guards bench.py (minimoe.bench.cli) end to end on the CPU: every metric and its roofline, profiles, errors, compare, plots, memory plan.

Each run is `bench.main([...])` in-process on a tiny card with a few tokens (well under a second), and
the checks are arithmetic the JSON must satisfy (tok/s = bs*out/E2E, E2E = TTFT + sum of ITLs, ...),
so a wrong formula, a dropped field or a swallowed error fails here. Known bugs are strict xfails.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
import pytest
import torch

from minimoe.bench import cli as bench
from minimoe.bench import memory
from minimoe.bench.roofline import count_params, prefill_flops
from minimoe.cards import load_card
from minimoe.families import config_from_hf
from minimoe.kv_cache import KVCache

TINY_CARDS = ("olmoe-tiny", "mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "deepseek-moe-tiny",
              "deepseek-v2-lite-tiny", "deepseek-v3-tiny")
SHORT = ["--input-len", "8", "--output-len", "6", "--warmup", "0", "--iters", "1"]
METRICS = ("ttft_ms", "itl_median_ms", "itl_p90_ms", "e2e_s", "output_tok_s", "throughput_tok_s", "prefill_tok_s")
ROOFLINE = ("decode_step_floor_ms", "prefill_floor_ms", "output_tok_s_floor", "decode_pct_of_floor",
            "prefill_pct_of_peak", "e2e_pct_of_floor", "decode_step_bytes", "prefill_flops",
            "experts_touched_per_layer", "flags")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_bench(capsys, *argv):
    """bench.main in-process -> (exit status, stdout, stderr); argparse's SystemExit counts as a status.
    Pinned to the CPU (a later --device in argv wins), so a GPU machine runs these checks unchanged."""
    capsys.readouterr()
    try:
        rc = bench.main(["--device", "cpu"] + [str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def bench_json(capsys, *argv) -> dict:
    rc, out, err = run_bench(capsys, *argv)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


def card_config(card):
    return config_from_hf(load_card(card))


def expected_load(cfg, batch, n_in, n_out, k=None):
    """What --load-heatmap counts per MoE layer: one extra generation after timing, prefill included
    (batch*n_in tokens) plus its n_out-1 decode steps (batch tokens each), K slots per token."""
    return batch * (k or cfg.top_k) * (n_in + n_out - 1)


# ---- every family: every metric, and the arithmetic between them ---------------------------------


@pytest.mark.parametrize("card", TINY_CARDS)
def test_bench_reports_every_metric(card, capsys, tmp_path):
    bs, n_in, n_out = 2, 8, 6
    path = tmp_path / "out.json"
    rc, out, err = run_bench(capsys, "--model", card, "--bs", bs, "--input-len", n_in, "--output-len", n_out,
                             "--warmup", 0, "--iters", 1, "--json", path)
    assert rc == 0, err
    last = out.strip().splitlines()[-1]
    assert path.read_text() == last + "\n"                       # the file and the last line are one object
    j = json.loads(last)
    cfg = card_config(card)

    assert set(j["versions"]) >= {"torch", "python", "triton", "device"}
    assert j["versions"]["torch"] == torch.__version__ and j["versions"]["device"] == "cpu"
    assert j["ceilings"]["source"] == "measured"
    assert j["ceilings"]["bandwidth_GBps"] > 0 and j["ceilings"]["matmul_TFLOPs"] > 0
    assert j["ceilings"]["bandwidth_GBps"] == max(j["ceilings"]["copy_GBps"], j["ceilings"]["read_GBps"])
    assert j["config"]["family"] == cfg.family and j["config"]["n_experts"] == cfg.n_experts
    shown = re.search(r"params ([0-9.]+)([KMB]) total", out)     # the header's count, in the field's units (3 digits)
    assert shown and abs(float(shown[1]) * {"K": 1e3, "M": 1e6, "B": 1e9}[shown[2]] / j["params"]["total"] - 1) < 5e-3
    assert j["params"]["total"] == count_params(cfg).total
    assert j["graphs"] == "off (no GPU)" and j["settings"]["experts"] == "loop"
    assert f"minimoe bs{bs} {n_in}/{n_out}" in out               # the table row

    (res,) = j["results"]
    assert (res["batch"], res["input_len"], res["output_len"]) == (bs, n_in, n_out)
    assert res["peak_mem_GiB"] is None or res["peak_mem_GiB"] > 0   # None on a CPU: PyTorch tracks it on CUDA
    m, r, itl = res["metrics"], res["roofline"], res["itl_ms"]
    assert set(m) >= set(METRICS) and set(r) >= set(ROOFLINE)
    assert all(math.isfinite(m[k]) and m[k] > 0 for k in METRICS)

    assert len(itl) == n_out - 1
    assert m["e2e_s"] * 1e3 == pytest.approx(m["ttft_ms"] + sum(itl), rel=1e-9)
    assert m["output_tok_s"] == pytest.approx(bs * n_out / m["e2e_s"], rel=1e-9)
    assert m["throughput_tok_s"] == pytest.approx(bs * (n_in + n_out) / m["e2e_s"], rel=1e-9)
    assert m["prefill_tok_s"] == pytest.approx(bs * n_in / (m["ttft_ms"] / 1e3), rel=1e-9)
    assert m["itl_median_ms"] == pytest.approx(statistics.median(itl))
    assert m["itl_p90_ms"] == sorted(itl)[math.ceil(0.9 * (len(itl) - 1))]

    step_bytes = r["decode_step_bytes"]
    assert step_bytes["total"] == pytest.approx(step_bytes["weights"] + step_bytes["experts"] + step_bytes["kv"])
    assert step_bytes["kv"] == pytest.approx(cfg.n_layers * bs * (n_in + n_out / 2) * cfg.kv_bytes_per_token(4))
    bandwidth, peak = j["ceilings"]["bandwidth_GBps"] * 1e9, j["ceilings"]["matmul_TFLOPs"] * 1e12
    assert r["decode_step_floor_ms"] == pytest.approx(step_bytes["total"] / bandwidth * 1e3)
    assert r["prefill_floor_ms"] == pytest.approx(r["prefill_flops"] / peak * 1e3)
    floor_e2e_s = (r["prefill_floor_ms"] + (n_out - 1) * r["decode_step_floor_ms"]) / 1e3
    assert r["output_tok_s_floor"] == pytest.approx(bs * n_out / floor_e2e_s)
    assert r["decode_pct_of_floor"] == pytest.approx(100 * r["decode_step_floor_ms"] / m["itl_median_ms"])
    assert r["prefill_pct_of_peak"] == pytest.approx(100 * r["prefill_floor_ms"] / m["ttft_ms"])
    assert r["e2e_pct_of_floor"] == pytest.approx(100 * floor_e2e_s / m["e2e_s"])
    # two tokens per decode step, K distinct experts each: between K and min(2K, E) experts per layer
    assert cfg.top_k <= r["experts_touched_per_layer"] <= min(bs * cfg.top_k, cfg.n_experts)
    assert r["flags"] == []                                     # a tiny model on a CPU is far from its floor


def test_figures_above_the_ceiling_are_flagged_not_reported(capsys, tmp_path):
    """Ceilings so low that every floor exceeds the measurement: each % figure > 100 is flagged as a bug."""
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps({"bandwidth_GBps": 1e-6, "matmul_TFLOPs": 1e-12}))
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", *SHORT, "--ceilings", ceilings)
    assert rc == 0
    j = json.loads(out.strip().splitlines()[-1])
    assert j["ceilings"]["source"] == str(ceilings) and j["ceilings"]["bandwidth_GBps"] == 1e-6
    flags = j["results"][0]["roofline"]["flags"]
    assert [f.split(" = ")[0] for f in flags] == ["decode_pct_of_floor", "prefill_pct_of_peak", "e2e_pct_of_floor"]
    warnings = [line for line in err.splitlines() if line.startswith("# WARNING bs1 8/6: ")]
    assert len(warnings) == 3 and all(line.endswith("> 100%: measurement bug") for line in warnings)


def test_median_of_timed_runs_is_reported_and_warmup_is_not(monkeypatch):
    e2e = iter([100.0, 100.0, 5.0, 1.0, 3.0])                  # two warm-up runs, then three timed ones
    calls = []

    def fake_run(gen, prompts, out_len):
        calls.append(out_len)
        return {"ttft_ms": 0.0, "itl_ms": [], "e2e_ms": next(e2e)}
    monkeypatch.setattr(bench.timing, "timed_generation", fake_run)
    run = bench.measure(gen=None, prompts=None, out_len=7, warmup=2, iters=3, use_graphs=False)
    assert run["e2e_ms"] == 3.0 and calls == [7] * 5


# ---- --profile ----------------------------------------------------------------------------------


def test_profile_regions_cover_the_eager_step(capsys):
    """Region totals within 10% of the measured eager step. The machine is shared, so a run whose
    window caught a preemption outside the regions is retried (up to 5 runs of ~0.1 s); a missing region
    (the attention and the experts are each over a quarter of the step) would still fail every attempt."""
    cfg = card_config("olmoe-tiny")
    L = cfg.n_layers
    calls = {"embed": 1, "attention": L, "norm": 2 * L + 1, "router": L, "experts": L, "lm_head": 1, "sample": 1}
    coverages = []
    for _ in range(5):
        rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", "--bs", 8, "--input-len", 64, "--output-len", 10,
                                 "--warmup", 0, "--iters", 1, "--profile")
        assert rc == 0, err
        j = json.loads(out.strip().splitlines()[-1])
        prof = j["results"][0]["profile"]
        regions = prof["regions"]
        assert {n: v["calls_per_step"] for n, v in regions.items()} == calls
        covered = sum(v["ms_per_step"] for v in regions.values())
        assert prof["covered_ms"] == pytest.approx(covered)
        assert prof["coverage_pct"] == pytest.approx(100 * covered / prof["step_ms"])
        assert prof["coverage_pct"] <= 100 + 1e-6                # flat regions inside the step cannot exceed it
        assert sum(v["pct"] for v in regions.values()) == pytest.approx(100)
        assert f"# profile bs8 64/10: eager decode step {prof['step_ms']:.3f} ms" in out
        coverages.append(prof["coverage_pct"])
        if coverages[-1] >= 90:
            break
    assert max(coverages) >= 90, coverages


# ---- bad input: exit 2, one line ----------------------------------------------------------------


BASE = ["--model", "olmoe-tiny", *SHORT]
STDLIB_CONFIG = Path(__file__).resolve().parents[1] / "models" / "olmoe-stdlib" / "config.json"
BAD_INPUT = {
    "unknown model": (["--model", "no-such-model"], "unknown model 'no-such-model': not a model card"),
    "zero batch": (BASE + ["--bs", "0"], "--bs must be at least 1, got 0"),
    "negative input": (["--model", "olmoe-tiny", "--input-len", "-5"], "--input-len must be at least 1, got -5"),
    "zero output": (BASE + ["--output-len", "0"], "--output-len must be at least 1, got 0"),
    "longer than the model": (BASE + ["--input-len", "3000", "--output-len", "2"],
                              "3000 + 2 tokens need 3001 positions, more than the model's max_position_embeddings 2048"),
    "no iters": (BASE + ["--iters", "0"], "--warmup must be >= 0 and --iters >= 1 (got --warmup 0, --iters 0)"),
    "config file for a folder": (["--model", str(STDLIB_CONFIG)],
                                 f"{STDLIB_CONFIG}: a file, not a directory: pass its folder"),
    "prune ratio": (BASE + ["--prune", "inter:1.5"], "--prune: the pruning ratio must be a fraction between 0 and 1"),
    "missing weights": (BASE + ["--weights", "/nonexistent"], "weights directory /nonexistent does not exist"),
    "fused on cpu": (BASE + ["--fused"], "--experts fused needs Triton on a CUDA GPU"),
    "triton attn on cpu": (BASE + ["--attn", "triton"], "--attn triton needs Triton on a CUDA GPU"),
    "triton ops on cpu": (BASE + ["--ops", "triton"], "--ops triton needs Triton on a CUDA GPU"),
    "unknown ops": (BASE + ["--ops", "cuda"], "--ops cuda: choose from auto, torch, triton"),
    "triton gemv on cpu": (BASE + ["--gemv", "triton"], "--gemv triton needs Triton on a CUDA GPU"),
    "unknown gemv": (BASE + ["--gemv", "cublas"], "--gemv cublas: choose from auto, torch, triton, stream"),
    "pdl on cpu": (BASE + ["--pdl", "on"], "--pdl on needs a Hopper (sm90) or newer GPU"),
    "unknown pdl": (BASE + ["--pdl", "yes"], "--pdl yes: choose from auto, on, off"),
    "fold without triton ops": (BASE + ["--fold-norm", "on"],
                                "--fold-norm on runs the norm inside the router's Triton kernel: it needs --ops triton"),
    "unknown fold": (BASE + ["--fold-norm", "maybe"], "--fold-norm maybe: choose from auto, on, off"),
    "cuda device": (BASE + ["--device", "cuda"], "--device cuda: no CUDA GPU is available here"),
    "fused vs grouped": (BASE + ["--fused", "--experts", "grouped"], "--fused contradicts --experts grouped"),
    "skip at K=1": (BASE + ["--topk", "1", "--skip-threshold", "0.3"], "each token is routed to one expert (K=1, from --topk or the card)"),
    "fused vs loop": (BASE + ["--fused", "--experts", "loop"], "--fused contradicts --experts loop"),
    "topk too large": (BASE + ["--topk", "99"], "--topk 99 must be between 1 and the expert count 8"),
    "topk zero": (BASE + ["--topk", "0"], "--topk must be at least 1, got 0"),
    "unknown dtype": (BASE + ["--dtype", "fp8"], "--dtype fp8: choose from bf16, fp16, fp32"),
    "unknown expert path": (BASE + ["--experts", "magic"], "--experts magic: choose from loop, grouped, fused"),
    "unknown router": (BASE + ["--router", "fastest"], "--router: unknown router 'fastest'; choose balanced | "),
    "json folder missing": (BASE + ["--json", "/no/such/dir/out.json"], "--json /no/such/dir/out.json: the folder"),
    "plot folder missing": (BASE + ["--plot", "/no/such/dir/p.png"], "--plot /no/such/dir/p.png: the folder"),
    "heatmap of a dense model": (["--model", "qwen3-stdlib-draft", *SHORT, "--load-heatmap", "h.png"],
                                 "--load-heatmap shows routed experts' load: qwen3-stdlib-draft is a dense model"),
    "negative zipf exponent": (BASE + ["--router", "zipf", "--zipf-s", "-1"], "--zipf-s must be finite and >= 0"),
    "json is a folder": (BASE + ["--json", "/tmp"], "--json /tmp is a folder: give a file name in it"),
    "heatmap is a folder": (BASE + ["--load-heatmap", "/tmp"], "--load-heatmap /tmp is a folder"),
    "plot not an image": (BASE + ["--plot", "p.txt"], "--plot p.txt: name the image with an extension"),
    "plot needing LaTeX": (BASE + ["--plot", "p.pgf"], "--plot p.pgf: name the image with an extension"),
    "heatmap without extension": (BASE + ["--load-heatmap", "h"], "--load-heatmap h: name the image"),
    "directory without weights": (["--model", "/tmp", *SHORT], "/tmp has no config.json"),
    "batch too big for RAM": (BASE + ["--bs", "100000000"], "tokens needs"),
    "compare remote code": (["--model", "deepseek-moe-tiny", *SHORT, "--compare", "transformers"],
                            "--compare transformers: DeepSeekMoE-16B is remote code"),
}


@pytest.mark.parametrize("argv,message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)     # else --fused / --attn triton are allowed
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, out, err = run_bench(capsys, *argv)
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0]
    assert out == ""                                          # refused before the header: nothing measured


@pytest.mark.parametrize("n_in,n_out", [(2047, 2), (2048, 1)])
def test_runs_that_fill_the_positions_exactly(n_in, n_out, capsys):
    """in + out - 1 fed positions = max_position_embeddings (2048) is accepted by the check, so it must run: the
    generator is sized within the model's positions, the touched-experts count fits its extra step or falls back."""
    res = bench_json(capsys, "--model", "olmoe-tiny", "--input-len", n_in, "--output-len", n_out,
                     "--warmup", 0, "--iters", 1)["results"][0]
    assert res["input_len"] == n_in and len(res["itl_ms"]) == n_out - 1
    assert 1 <= res["roofline"]["experts_touched_per_layer"] <= card_config("olmoe-tiny").n_experts


@pytest.mark.parametrize("argv,message", [
    (BASE + ["--compare", "vllm"], "argument --compare: invalid choice: 'vllm'"),
    (["--input-len", "8"], "the following arguments are required: --model"),
    (BASE + ["--compare-steps", "2"], "--compare-steps and --hf-experts only mean something with --compare"),
    (BASE + ["--compare", "transformers", "--hf-experts", "bogus"], "argument --hf-experts: invalid choice: 'bogus'"),
    (BASE + ["--zipf-s", "2"], "--zipf-s only means something with --router zipf"),
    (["--model", "olmoe-tiny", "--sweep", "--input-len-dist", "uniform:4-8"], "contradicts --input-len-dist"),
    (BASE + ["--input-len-dist", "uniform:4-8"], "--input-len-dist replaces --input-len: give one of them"),
    (BASE + ["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--model", "olmoe-tiny", "--sweep", "--output-len", "4"], "--sweep runs the paper's equal lengths (128..2048 in and out); it "
                                              "contradicts --output-len"),
    (["--model", "olmoe-tiny", "--sweep", "--input-len", "16"], "it contradicts --input-len"),
    (BASE + ["--bs", "x"], "argument --bs: invalid int value: 'x'"),
    (BASE + ["--out", "x.json"], "unrecognized arguments: --out x.json"),          # no abbreviation of --output-len
])
def test_argparse_errors_exit_2(argv, message, capsys):
    """argparse's refusals and the parse-time checks: one line (no usage block above it), exit status 2."""
    rc, out, err = run_bench(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.py: error: ") and message in lines[0], err


def test_output_path_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, out, err = run_bench(capsys, *BASE, "--json", tmp_path / "afile" / "x.json")
    assert rc == 2 and err.strip().splitlines() == [f"error: --json {tmp_path / 'afile' / 'x.json'}: "
                                                    f"{tmp_path / 'afile'} is a file"], err


def test_missing_ceilings_file_is_refused(capsys, tmp_path):
    missing = tmp_path / "nope.json"
    rc, out, err = run_bench(capsys, *BASE, "--ceilings", missing)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0]


def test_incomplete_ceilings_file_is_refused(capsys, tmp_path):
    partial = tmp_path / "partial.json"
    partial.write_text('{"bandwidth_GBps": 100}')
    rc, out, err = run_bench(capsys, *BASE, "--ceilings", partial)
    assert rc == 2
    assert err.strip().splitlines() == [f"error: {partial} needs bandwidth_GBps and matmul_TFLOPs"]


@pytest.mark.parametrize("body, shown", [('{"bandwidth_GBps": "fast", "matmul_TFLOPs": 1}', "bandwidth_GBps must be a "
                                          'positive number, got "fast"'),
                                         ('{"bandwidth_GBps": 10, "matmul_TFLOPs": null}', "matmul_TFLOPs must be a "
                                          "positive number, got null"),
                                         ('{"bandwidth_GBps": 0, "matmul_TFLOPs": 1}', "got 0"),
                                         ('{"bandwidth_GBps": -5, "matmul_TFLOPs": -1}', "got -5"),
                                         ('{"bandwidth_GBps": NaN, "matmul_TFLOPs": 1}', "got NaN"),
                                         ('{"bandwidth_GBps": 10, "matmul_TFLOPs": Infinity}', "got Infinity"),
                                         ('[1, 2]', "needs bandwidth_GBps and matmul_TFLOPs")])
def test_bad_ceilings_values_are_refused(body, shown, capsys, tmp_path):
    """A ceilings file's numbers divide every roofline figure: text, null, zero or a negative is one line, exit 2,
    before the model is built (nothing printed on stdout)."""
    bad = tmp_path / "bad.json"
    bad.write_text(body)
    rc, out, err = run_bench(capsys, *BASE, "--ceilings", bad)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and shown in lines[0], err


def test_json_line_is_strict_json_with_one_output_token(capsys):
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", "--input-len", 8, "--output-len", 1,
                             "--warmup", 0, "--iters", 1)
    assert rc == 0

    def reject(constant):
        raise ValueError(f"{constant} is not JSON")
    json.loads(out.strip().splitlines()[-1], parse_constant=reject)


def test_json_dash_writes_no_file(capsys, tmp_path, monkeypatch):
    """--json - : the JSON line on stdout as always, and no file named '-' (it means stdout, as in generate)."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", "--input-len", 8, "--output-len", 1,
                             "--warmup", 0, "--iters", 1, "--json", "-")
    assert rc == 0 and json.loads(out.strip().splitlines()[-1])["results"]
    assert not (tmp_path / "-").exists()


# ---- --compare transformers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_lib():
    """Imported before capsys starts: transformers binds its log handler to the sys.stderr of its first
    import, and a capsys stream is closed once its test ends."""
    return pytest.importorskip("transformers")


def test_compare_transformers_same_weights(transformers_lib, capsys):
    bs, n_in, n_out = 2, 8, 6
    j = bench_json(capsys, "--model", "olmoe-tiny", "--bs", bs, "--input-len", n_in, "--output-len", n_out,
                   "--warmup", 0, "--iters", 1, "--compare", "transformers", "--compare-steps", 2)
    (res,) = j["results"]
    hf = res["transformers"]
    assert set(hf) >= set(METRICS)
    assert hf["weights"] == "same" and hf["decode_steps_timed"] == 2
    assert all(math.isfinite(hf[k]) and hf[k] > 0 for k in METRICS)
    assert hf["output_tok_s"] == pytest.approx(bs * n_out / hf["e2e_s"], rel=1e-9)
    assert hf["throughput_tok_s"] == pytest.approx(bs * (n_in + n_out) / hf["e2e_s"], rel=1e-9)
    # 2 steps timed of 5: E2E extrapolated, so it exceeds TTFT + the two steps timed
    assert hf["e2e_s"] * 1e3 > hf["ttft_ms"] + 2 * min(hf["itl_median_ms"], hf["itl_p90_ms"])
    assert res["speedup_vs_transformers"] == pytest.approx(res["metrics"]["output_tok_s"] / hf["output_tok_s"])


def test_compare_extrapolation_uses_the_reported_median(transformers_lib, capsys):
    j = bench_json(capsys, "--model", "olmoe-tiny", *SHORT, "--compare", "transformers", "--compare-steps", 2)
    hf = j["results"][0]["transformers"]
    assert hf["e2e_s"] * 1e3 == pytest.approx(hf["ttft_ms"] + 5 * hf["itl_median_ms"], rel=1e-9)


def test_compare_steps_zero_is_refused(transformers_lib, capsys):
    rc, out, err = run_bench(capsys, *BASE, "--compare", "transformers", "--compare-steps", 0)
    assert rc == 2 and "--compare-steps" in err


# ---- --sweep and the configuration grid ---------------------------------------------------------


def namespace(*argv):
    return bench.parse_args(list(argv))


def test_sweep_is_the_papers_grid():
    args = namespace("--model", "qwen1.5-moe", "--sweep")                  # 8192 positions: the whole grid fits
    bench.validate(args, card_config("qwen1.5-moe"))
    configs = bench.grid(args)
    lengths = (128, 256, 512, 1024, 2048)
    assert configs == [(b, n, n) for b in (1, 16, 32, 64, 128) for n in lengths]
    assert len(configs) == 25 and all(n_in == n_out for _, n_in, n_out in configs)


def test_sweep_fits_olmoe_context():
    """The headline model runs the paper's longest point: 2048 prompt + 2047 fed tokens = 4095 <= 4096."""
    args = namespace("--model", "olmoe", "--sweep")
    bench.validate(args, card_config("olmoe"))
    assert (1, 2048, 2048) in bench.grid(args)


def test_grid_without_sweep_is_the_cross_product():
    args = namespace("--model", "olmoe-tiny", "--bs", "1", "4", "--input-len", "16", "--output-len", "8", "32")
    bench.validate(args, card_config("olmoe-tiny"))
    assert bench.grid(args) == [(1, 16, 8), (1, 16, 32), (4, 16, 8), (4, 16, 32)]


def test_sweep_runs_end_to_end_on_a_small_grid(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "PAPER_BATCHES", (1, 2))
    monkeypatch.setattr(bench, "PAPER_LENGTHS", (4, 6))
    plot = tmp_path / "sweep.png"
    j = bench_json(capsys, "--model", "olmoe-tiny", "--sweep", "--warmup", 0, "--iters", 1, "--plot", plot)
    got = [(r["batch"], r["input_len"], r["output_len"]) for r in j["results"]]
    assert got == [(1, 4, 4), (1, 6, 6), (2, 4, 4), (2, 6, 6)]
    assert all(len(r["itl_ms"]) == r["output_len"] - 1 for r in j["results"])
    assert plot.read_bytes()[:8] == PNG_MAGIC


# ---- routers and top-k --------------------------------------------------------------------------


def test_balanced_router_spreads_tokens_exactly(capsys, tmp_path):
    """olmoe-tiny: E=8, K=2, so bs 4 fills every expert once per decode step and twice per prompt position."""
    bs, n_in, n_out = 4, 8, 6
    j = bench_json(capsys, "--model", "olmoe-tiny", "--bs", bs, "--input-len", n_in, "--output-len", n_out,
                   "--warmup", 0, "--iters", 1, "--router", "balanced", "--load-heatmap", tmp_path / "h.png")
    assert j["settings"]["router"] == "balanced"
    per_expert = expected_load(card_config("olmoe-tiny"), bs, n_in, n_out) // 8
    assert j["expert_load"]["tokens_per_expert"] == [[per_expert] * 8] * 3
    assert j["expert_load"]["imbalance_max"] == 1.0


def test_zipf_router_favours_expert_zero(capsys, tmp_path):
    j = bench_json(capsys, "--model", "olmoe-tiny", "--bs", 4, *SHORT, "--router", "zipf",
                   "--load-heatmap", tmp_path / "h.png")
    for counts in j["expert_load"]["tokens_per_expert"]:
        assert counts[0] == max(counts) and counts[0] > 2 * counts[-1]
    assert j["expert_load"]["imbalance_max"] > 1.5


def test_heatmap_flag_has_evals_name_and_says_where_the_images_went(capsys, tmp_path):
    """bench.py's --load-heatmap is eval's --heatmap too (one name works in both), and each image's path is said."""
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", *SHORT, "--heatmap", tmp_path / "h.png",
                             "--plot", tmp_path / "p.png")
    assert rc == 0, err
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG_MAGIC == (tmp_path / "p.png").read_bytes()[:8]
    assert f"# expert-load heatmap written to {tmp_path / 'h.png'}" in err.splitlines()
    assert f"# throughput plot written to {tmp_path / 'p.png'}" in err.splitlines()


def test_uniform_router_runs(capsys):
    j = bench_json(capsys, "--model", "olmoe-tiny", *SHORT, "--router", "uniform")
    assert j["settings"]["router"] == "uniform"
    assert j["results"][0]["roofline"]["experts_touched_per_layer"] == 2.0   # bs 1: K distinct experts


def test_topk_1_routes_one_expert_per_token(capsys, tmp_path):
    cfg = card_config("olmoe-tiny")
    j = bench_json(capsys, "--model", "olmoe-tiny", *SHORT, "--topk", 1, "--load-heatmap", tmp_path / "h.png")
    assert j["settings"]["top_k"] == 1
    assert j["params"]["active"] == count_params(cfg).active(cfg, 1) < count_params(cfg).active(cfg)
    assert j["results"][0]["roofline"]["experts_touched_per_layer"] == 1.0
    assert [sum(c) for c in j["expert_load"]["tokens_per_expert"]] == [expected_load(cfg, 1, 8, 6, k=1)] * 3


def test_topk_reaches_the_prefill_roofline(capsys):
    cfg = card_config("olmoe-tiny")
    j = bench_json(capsys, "--model", "olmoe-tiny", *SHORT, "--topk", 1)
    assert j["results"][0]["roofline"]["prefill_flops"] == prefill_flops(cfg, count_params(cfg), 1, 8, 1)


# ---- --plot and --load-heatmap ------------------------------------------------------------------


def test_plot_and_load_heatmap(capsys, tmp_path):
    """deepseek-moe-tiny: layer 0 is dense (routes nothing), layers 1-2 are MoE with K=3."""
    bs, n_in, n_out = 2, 8, 6
    plot, heat = tmp_path / "tok_s.png", tmp_path / "load.png"
    j = bench_json(capsys, "--model", "deepseek-moe-tiny", "--bs", bs, "--input-len", n_in, "--output-len", n_out,
                   "--warmup", 0, "--iters", 1, "--plot", plot, "--load-heatmap", heat)
    for png in (plot, heat):
        assert png.read_bytes()[:8] == PNG_MAGIC
    cfg = card_config("deepseek-moe-tiny")
    counts = j["expert_load"]["tokens_per_expert"]
    assert len(counts) == cfg.n_layers and all(len(row) == cfg.n_experts for row in counts)
    assert [sum(row) for row in counts] == [0] + [expected_load(cfg, bs, n_in, n_out)] * 2


def test_plot_is_titled_with_what_ran(capsys, tmp_path, monkeypatch):
    """--plot: the image's title names the model, the device and the dtype / expert path (a saved PNG explains itself)."""
    from minimoe.bench import timing
    real, titles = timing.plot_throughput, []
    monkeypatch.setattr(timing, "plot_throughput", lambda path, results, title=None: titles.append(title)
                        or real(path, results, title=title))
    plot = tmp_path / "t.png"
    bench_json(capsys, "--model", "olmoe-tiny", *SHORT, "--plot", plot)
    assert plot.read_bytes()[:8] == PNG_MAGIC and len(titles) == 1
    assert "olmoe" in titles[0].lower() and "fp32" in titles[0] and "experts " in titles[0], titles


def test_load_imbalance_ignores_dense_layers(capsys, tmp_path):
    j = bench_json(capsys, "--model", "deepseek-moe-tiny", *SHORT, "--load-heatmap", tmp_path / "h.png")
    load = j["expert_load"]
    moe_rows = load["tokens_per_expert"][1:]
    per_layer = [max(row) / (sum(row) / len(row)) for row in moe_rows]
    assert load["imbalance_mean"] == pytest.approx(sum(per_layer) / len(per_layer))


# ---- memory planning ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def olmoe():
    return card_config("olmoe-tiny")


def test_plan_grows_with_batch_and_lengths(olmoe):
    def total(b, i, o):
        return memory.plan(olmoe, 10_000, b, i, o, 2).total
    assert total(1, 128, 128) < total(2, 128, 128) < total(64, 128, 128)
    assert total(4, 128, 128) < total(4, 256, 128) < total(4, 256, 512)
    p = memory.plan(olmoe, 10_000, 4, 128, 64, 2)
    assert p.weights == 10_000 and p.total == p.weights + p.kv + p.workspace


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v3-tiny"])   # GQA stores K and V, MLA the latent
def test_plan_kv_is_what_the_cache_allocates(card):
    cfg = card_config(card)
    cache = KVCache(cfg, 3, 20 + 7, torch.float16, "cpu")   # what bench.run_config allocates
    held = sum(t.numel() * t.element_size() for t in vars(cache).values()
               if isinstance(t, torch.Tensor) and t.dtype == torch.float16)
    assert memory.plan(cfg, 0, 3, 20, 7, 2).kv == held


def test_largest_batch_boundary(olmoe):
    fits = memory.plan(olmoe, 10_000, 37, 64, 32, 2).total
    assert memory.largest_batch(olmoe, 10_000, 64, 32, 2, free=fits) == 37
    assert memory.largest_batch(olmoe, 10_000, 64, 32, 2, free=fits - 1) == 36
    assert memory.largest_batch(olmoe, 10_000, 64, 32, 2, free=memory.plan(olmoe, 10_000, 1, 64, 32, 2).total - 1) == 0


def test_check_request_on_cpu_checks_ram_not_the_gpu(olmoe, monkeypatch):
    """The CPU plan counts the KV cache and activations against this machine's free RAM."""
    def no_gpu(*a):
        raise AssertionError("mem_get_info called for a CPU run")
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_gpu)
    p = memory.check_request(olmoe, 10_000, 2, 64, 32, 2, "cpu")
    assert p.total == memory.plan(olmoe, 10_000, 2, 64, 32, 2).total
    with pytest.raises(MemoryError, match=r"batch 100000000 x \(64\+32\) tokens needs"):
        memory.check_request(olmoe, 10_000, 10 ** 8, 64, 32, 2, "cpu")


def test_check_request_names_the_largest_batch_that_fits(olmoe, monkeypatch):
    """Exercised on the CPU by pretending the device is CUDA and faking its free memory."""
    free = memory.plan(olmoe, 10_000, 37, 64, 32, 2).total
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free + 500, 10 * free))
    assert memory.check_request(olmoe, 10_000, 37, 64, 32, 2, "cuda", extra=500).total == free
    with pytest.raises(MemoryError, match=r"batch 38 x \(64\+32\) tokens needs .* the largest batch that fits is 37$"):
        memory.check_request(olmoe, 10_000, 38, 64, 32, 2, "cuda", extra=500)
    with pytest.raises(MemoryError, match="the largest batch that fits is 36$"):
        memory.check_request(olmoe, 10_000, 37, 64, 32, 2, "cuda", extra=501)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10_000, 10 * free))
    with pytest.raises(MemoryError, match="even batch 1 does not fit$"):
        memory.check_request(olmoe, 10_000, 1, 64, 32, 2, "cuda")


def test_bench_reports_a_batch_that_does_not_fit(capsys, monkeypatch):
    """The bench's own check, with the device reported as CUDA with ~3 MB free: exit 2, one line, a hint."""
    real = memory.check_request

    def as_if_cuda(cfg, wbytes, b, n_in, n_out, nbytes, device, top_k=None, extra=0, weights_resident=False):
        return real(cfg, wbytes, b, n_in, n_out, nbytes, torch.device("cuda"), top_k, extra, weights_resident)
    monkeypatch.setattr(memory, "check_request", as_if_cuda)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3_000_000, 10 ** 10))
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", "--bs", 64, "--input-len", 64, "--output-len", 6,
                             "--warmup", 0, "--iters", 1)
    assert rc == 2
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: batch 64 x (64+6) tokens needs ")        # refused before the model is built
    assert "the largest batch that fits is" in line and "even batch 1" not in line


# ---- what ran: weights, switches, numerical health; ragged prompts -----------------------------------


def test_a_checkpoint_directory_benchmarks_its_own_weights(hf_checkpoint, capsys):
    """--model DIR means that checkpoint's weights (as in generate); random weights must be asked for."""
    folder, _ = hf_checkpoint("olmoe")
    rc, out, err = run_bench(capsys, "--model", folder, *SHORT)
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["weights"] == str(folder) and f"weights: {folder}" in out
    dummy = bench_json(capsys, "--model", folder, "--weights", "dummy", *SHORT)
    assert dummy["weights"].startswith("dummy")
    card = bench_json(capsys, "--model", "olmoe-tiny", *SHORT)
    assert card["weights"].startswith("dummy") and card["settings"]["dtype"] == "fp32"
    assert set(card["settings"]) >= {"experts", "attn", "ops", "gemv", "pdl", "quant", "seed", "device"}


def test_non_finite_logits_are_counted_and_warned(capsys, monkeypatch):
    """A NaN in the final norm's weight makes every row non-finite: counted on the device, warned once."""
    from minimoe import loader
    real = loader.init_dummy

    def poisoned(model, *args, **kwargs):
        real(model, *args, **kwargs)
        model.norm.weight.data[0] = float("nan")
    monkeypatch.setattr(loader, "init_dummy", poisoned)
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", "--bs", 2, *SHORT)
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])["results"][0]
    assert res["nonfinite_logit_rows"] == 2 * 6                     # every row of every step (bs 2, 6 tokens)
    assert sum("rows of logits held NaN/inf" in line for line in err.splitlines()) == 1


def test_ragged_prompt_lengths_from_a_distribution(capsys, tmp_path):
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("3\n9\n5\n")
    j = bench_json(capsys, "--model", "olmoe-tiny", "--bs", 4, "--input-len-dist", f"file:{lengths}",
                   "--output-len", 4, "--warmup", 0, "--iters", 1)
    (res,) = j["results"]
    assert res["input_lens"] == [3, 9, 5, 3] and res["input_len"] == f"file:{lengths}"
    m = res["metrics"]
    assert m["prefill_tok_s"] == pytest.approx(sum([3, 9, 5, 3]) / (m["ttft_ms"] / 1e3), rel=1e-9)
    u = bench_json(capsys, "--model", "olmoe-tiny", "--bs", 8, "--input-len-dist", "uniform:2-6", "--output-len", 3,
                   "--warmup", 0, "--iters", 1)["results"][0]
    assert len(u["input_lens"]) == 8 and all(2 <= n <= 6 for n in u["input_lens"])


@pytest.mark.parametrize("spec", ["uniform:5-2", "uniform:0-4", "normal:3", "file:/no/such/file"])
def test_bad_length_distribution_is_refused(capsys, spec):
    rc, out, err = run_bench(capsys, "--model", "olmoe-tiny", "--input-len-dist", spec, "--output-len", 2)
    said = "no such file /no/such/file" if spec.startswith("file:") else "use uniform:LO-HI"
    assert rc == 2 and f"--input-len-dist {spec}: {said}" in err and out == ""


def test_sweep_takes_the_given_batch_sizes():
    args = namespace("--model", "qwen1.5-moe", "--sweep", "--bs", "2", "8")
    assert {b for b, _, _ in bench.grid(args)} == {2, 8}
