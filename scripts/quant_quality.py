"""Quality of each weight format on trained models: bits per byte, logits error, greedy agreement (issue 12).

    python scripts/quant_quality.py --models olmoe-stdlib mixtral-stdlib
    python scripts/quant_quality.py --models olmoe-stdlib --formats int8 int4 fp8@fused --max-bytes 60000 --json q.json

One table per model, one row per format (the unquantized model first, in the run's dtype: fp32 on a CPU,
bf16 on a GPU):
    bits/w      stored bits per weight of the routed experts (codes + scales), from the built model
    bpb         `python -m minimoe eval` bits per byte on models/stdlib-heldout.txt (window 512, stride 256),
                and its change over the unquantized model; the issue's bound beside it (fp8, int8: +0.5%;
                int4: +3%; nf4, bnb-int8: reported only)
    logits err  ||logits_q - logits|| / ||logits|| over the first --window tokens of the held-out text
    agree       teacher-forced greedy agreement: the unquantized model's greedy continuation of a 32-token
                held-out prompt (--tokens long) is fed to both; the share of positions whose argmax agrees
    diverge     the first position where the quantized model's own greedy decoding leaves that continuation
                (its length when it never does). The two columns run different numerics: the teacher-forced pass
                is one append of prompt + continuation, where fp8's dense layers quantize the activations too
                (past 32 rows, W8A8), while decoding runs one row a step, weight-only; so a near-tie can flip in
                one and not the other (mixtral-stdlib fp8: agree 100.0%, diverge 8).
A format may name its expert path, FORMAT@PATH (default --experts, loop). The loop path computes fp8 experts
with activations in the compute dtype (dense fp8 layers do quantize activations per token past 32 rows, as on
the GPU); `fp8@fused` runs the Triton kernels, whose prefill GEMMs quantize the experts' activations too
(W8A8), but on a CPU they are interpreted: minutes for even --max-bytes 2000; meant for a GPU.
Tiny trained models pad their narrow matrices to whole 128-groups, so int4's bits/w there exceed 4.25.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():           # fp8@fused on a CPU: kernels interpreted (set before they are imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from minimoe import evaluate_cli  # noqa: E402
from minimoe.cli import load_tokenizer  # noqa: E402
from minimoe.evaluate import load_heldout  # noqa: E402
from minimoe.cards import cards_dir  # noqa: E402
from minimoe.generate import Generator  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.qexperts import QuantExperts  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

BOUND = {"fp8": 0.5, "int8": 0.5, "int4": 3.0}          # % bits-per-byte over the unquantized model


def eval_bpb(model: str, fmt: str, experts: str, a) -> float:
    p = argparse.ArgumentParser()
    evaluate_cli.add_parser(p.add_subparsers(dest="cmd"))
    argv = ["eval", "--model", model, "--quant", fmt, "--experts", experts, "--device", a.device, "--dtype", a.dtype,
            "--window", str(a.window), "--stride", str(a.stride)]
    argv += ["--max-bytes", str(a.max_bytes)] if a.max_bytes else []
    return evaluate_cli.run(p.parse_args(argv))["bpb"]


def build(model: str, fmt: str, experts: str, a):
    s = RunSettings(device=a.device, dtype=a.dtype, experts=experts, quant=fmt).resolve()
    net, cfg, folder = build_model(model, "auto", dtype=s.torch_dtype, device=s.device, settings=s)
    return net, folder


def expert_bits(net) -> float | None:
    ex = next((m for m in net.modules() if isinstance(m, QuantExperts)), None)
    if ex is None:
        return None
    E, N, K = ex.w13.stack_shape
    return 8 * (ex.w13.nbytes + ex.w2.nbytes) / (E * (N * K + ex.w2.stack_shape[1] * ex.w2.stack_shape[2]))


@torch.no_grad()
def greedy(net, prompt: torch.Tensor, n: int) -> torch.Tensor:
    return Generator(net, 1, prompt.shape[1] + n + 1).generate(prompt, n)[0]          # [n]


@torch.no_grad()
def logits(net, ids: torch.Tensor) -> torch.Tensor:
    return Generator(net, ids.shape[0], ids.shape[1] + 1).append(ids).float()


def compare(ref_net, net, window_ids, prompt, continuation) -> dict:
    lr, lq = logits(ref_net, window_ids), logits(net, window_ids)
    teacher = torch.cat([prompt, continuation[None]], dim=1)
    n = continuation.shape[0]
    pred = logits(net, teacher)[0, prompt.shape[1] - 1:-1].argmax(-1)                # [n] next-token argmax
    own = greedy(net, prompt, n)
    diverge = (own != continuation).nonzero()
    return {"logits_rel_err": ((lq - lr).norm() / lr.norm()).item(),
            "greedy_agree": (pred == continuation).float().mean().item(),
            "first_divergence": int(diverge[0]) if diverge.numel() else n}


def model_table(model: str, a) -> list[dict]:
    ref_net, folder = build(model, "none", a.experts, a)
    tok = load_tokenizer(folder)
    if tok is None:
        raise SystemExit(f"{model}: no tokenizer files; quality needs a trained checkpoint with its tokenizer")
    text = load_heldout(a.data or str(cards_dir() / "stdlib-heldout.txt"))
    ids = torch.tensor(tok(text[:20000])["input_ids"], device=ref_net.embed.weight.device)
    window_ids, prompt = ids[None, :a.window], ids[None, :32]
    continuation = greedy(ref_net, prompt, a.tokens)
    rows = [{"format": "none", "experts": a.experts, "bpb": eval_bpb(model, "none", a.experts, a), "bits_w": None}]
    for spec in a.formats:
        fmt, _, experts = spec.partition("@")
        experts = experts or a.experts
        t0 = time.time()
        net, _ = build(model, fmt, experts, a)
        row = {"format": fmt, "experts": experts, "bits_w": expert_bits(net),
               **compare(ref_net, net, window_ids, prompt, continuation)}
        del net
        row["bpb"] = eval_bpb(model, fmt, experts, a)
        row["bpb_change_pct"] = 100 * (row["bpb"] / rows[0]["bpb"] - 1)
        row["bound_pct"] = BOUND.get(fmt)
        row["seconds"] = time.time() - t0
        rows.append(row)
        print(f"# {model} {spec}: {row}", file=sys.stderr)
    return rows


def print_table(model: str, rows: list[dict], a) -> None:
    print(f"\n# {model}: {a.dtype} on {a.device}, window {a.window} stride {a.stride}"
          f"{f', first {a.max_bytes} bytes' if a.max_bytes else ''}; agreement over {a.tokens} greedy tokens")
    print(f"{'format':16s} {'bits/w':>7s} {'bits/byte':>10s} {'change':>8s} {'bound':>7s} {'logits err':>11s} "
          f"{'agree':>7s} {'diverge':>8s}")
    for r in rows:
        name = r["format"] + ("" if r["experts"] == a.experts else f"@{r['experts']}")
        if r["format"] == "none":
            print(f"{'unquantized':16s} {'-':>7s} {r['bpb']:10.4f}")
            continue
        bound = f"{r['bound_pct']:+.1f}%" if r["bound_pct"] is not None else "-"
        ok = "" if r["bound_pct"] is None else ("  ok" if r["bpb_change_pct"] <= r["bound_pct"] else "  OVER")
        print(f"{name:16s} {r['bits_w']:7.2f} {r['bpb']:10.4f} {r['bpb_change_pct']:+7.2f}% {bound:>7s} "
              f"{r['logits_rel_err']:11.2e} {100 * r['greedy_agree']:6.1f}% {r['first_divergence']:8d}{ok}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="trained checkpoints (cards, dirs): olmoe-stdlib ...")
    p.add_argument("--formats", nargs="+", default=["fp8", "int8", "int4", "nf4", "bnb-int8"],
                   help="FORMAT or FORMAT@EXPERT_PATH")
    p.add_argument("--experts", default="loop", help="expert path of the rows that do not name one")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--data", help="held-out text (default: models/stdlib-heldout.txt)")
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes (quick looks)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--tokens", type=int, default=256, help="greedy tokens compared")
    p.add_argument("--json", help="write every row as JSON here")
    a = p.parse_args(argv)
    s = RunSettings(device=a.device, dtype=a.dtype).resolve()
    a.device, a.dtype = s.device, s.dtype
    tables = {}
    for m in a.models:
        tables[m] = model_table(m, a)
        print_table(m, tables[m], a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": {"device": a.device, "dtype": a.dtype, "max_bytes": a.max_bytes,
                                    "window": a.window, "stride": a.stride, "tokens": a.tokens}, "tables": tables}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
