"""Which earlier action leaves the graphed bs-1 decode step slower for the rest of the process?

    python scripts/state_probe.py --model olmoe --action prefill-graph [--rounds 3] [--json OUT]

The thirty-sixth session (calls 4-5) found OLMoE's bs-1 step at ~886 µs in a fresh process and ~902 once a prefill graph
had been captured (Qwen3-30B-A3B ~2,452 against ~2,482), for the rest of the process in one run. Here one process times
a round (a new Generator, its decode graph, a prefill, 3 blocks of `--steps` steps of decode(own=False), the median),
then does ACTION once, then times `--rounds` more rounds. Actions:

    none            nothing (the control)
    prefill-graph   capture a prefill graph of `--input-len` tokens on a throwaway Generator, then drop it
    prefill-eager   run that prefill eagerly on a side stream, as the capture's warm-up does, no capture
    mm-graph        capture one cuBLAS product [input-len, D] x [D, D] in a graph
    sdpa-graph      capture one torch scaled_dot_product_attention of [1, H, input-len, d] in a graph
    add-graph       capture one tiny elementwise add in a graph

--during runs the action inside every later round instead, after that round's decode graph is captured, and keeps
what it made (the graph) alive while the round is timed: whether a second graph coexisting with the decode graph is
what slows it (the prefill graph on the same Generator did, calls 4-9; on a throwaway Generator it did not, call 6).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from minimoe.generate import Generator
from minimoe.graphs import PrefillGraph, _capture, enable_graphs
from minimoe.loader import build_model
from minimoe.settings import RunSettings

ACTIONS = ("none", "prefill-graph", "prefill-eager", "mm-graph", "sdpa-graph", "add-graph")


def time_round(model, prompt, steps: int, during=None) -> list[float]:
    """A new Generator and its decode graph; `during(gen)`, if given, runs after the capture and what it returns is
    kept alive while the steps are timed."""
    gen = Generator(model, prompt.shape[0], prompt.shape[1] + steps + 64)
    enable_graphs(gen)
    held = during(gen) if during is not None else None  # noqa: F841  (kept alive on purpose)
    blocks = []
    for _ in range(3):
        gen.reset()
        tok = gen.prefill(prompt)
        for _ in range(4):
            tok = gen.decode(tok, own=False)
        torch.cuda.synchronize()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(steps):
            tok = gen.decode(tok, own=False)
        t1.record()
        t1.synchronize()
        blocks.append(t0.elapsed_time(t1) * 1e3 / steps)
    return blocks


def capture(fn):
    """fn captured in a graph as the engine captures its steps (graphs._capture: a warm-up on a side stream), replayed
    once; the graph is returned (dropped by the caller, or held)."""
    graph, _ = _capture(fn, lambda: None, 1)
    graph.replay()
    torch.cuda.synchronize()
    return graph


def act(action: str, model, cfg, prompt):
    S, dev = prompt.shape[1], "cuda"
    if action == "prefill-graph":
        gen = Generator(model, prompt.shape[0], S + 8)
        return gen, PrefillGraph(gen, S)            # the graph writes gen's cache: both held, or both dropped
    elif action == "prefill-eager":
        gen = Generator(model, prompt.shape[0], S + 8)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.inference_mode():
            gen.eager_prefill(prompt.to(dev), torch.full((prompt.shape[0],), S, dtype=torch.int32, device=dev))
        torch.cuda.current_stream().wait_stream(s)
    elif action == "mm-graph":
        x = torch.randn(S, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
        w = torch.randn(cfg.hidden_size, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
        return capture(lambda: x @ w.t())
    elif action == "sdpa-graph":
        q = torch.randn(1, cfg.n_heads, S, 128, device=dev, dtype=torch.bfloat16)
        return capture(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    elif action == "add-graph":
        x = torch.randn(1024, device=dev)
        return capture(lambda: x + 1)
    torch.cuda.synchronize()
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--action", choices=ACTIONS, required=True)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--during", action="store_true",
                   help="run the action in every later round after its decode graph's capture, its graph held")
    p.add_argument("--json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("state_probe: needs a CUDA GPU")
    s = RunSettings(experts="fused", device="cuda").resolve()
    model, cfg, _ = build_model(a.model, "dummy", dtype=s.torch_dtype, device=s.torch_device, settings=s)
    prompt = torch.randint(0, cfg.vocab_size, (1, a.input_len), generator=torch.Generator().manual_seed(0))
    before = time_round(model, prompt, a.steps)
    if a.during:
        after = [time_round(model, prompt, a.steps, lambda gen: act(a.action, model, cfg, prompt))
                 for _ in range(a.rounds)]
    else:
        act(a.action, model, cfg, prompt)
        after = [time_round(model, prompt, a.steps) for _ in range(a.rounds)]
    b, f = statistics.median(before), statistics.median([statistics.median(x) for x in after])
    print(f"{a.model:8s} {a.action + (' (during)' if a.during else ''):23s} before {b:8.1f}  after {f:8.1f} us/step ({100 * (f / b - 1):+.2f}%)  "
          f"rounds after: {', '.join(f'{statistics.median(x):.1f}' for x in after)}", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": a.model, "action": a.action, "during": a.during, "before": before, "after": after}, fh, indent=1)


if __name__ == "__main__":
    main()
