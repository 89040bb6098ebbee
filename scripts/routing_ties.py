"""How often two bf16 expert paths route a token apart, and what it does to the logits (CPU; no GPU needed).

    python scripts/routing_ties.py [--cards qwen3-moe-tiny mixtral-tiny deepseek-v3-tiny] [--draws 75] [--batch 3]

The twenty-second session saw tests/test_gpu.py::test_fast_paths_match_loop_bf16 fail now and then on the GPU: one
sequence of three with its next-token logits 1.6-7.1% from the loop oracle's, the others at rounding (~5e-3). The
same picture arises without any GPU kernel: a bf16 near-tie between two experts' router scores, broken one way by one
summation order and the other way by another, sends one token to another expert, and every later position of that
sequence sees it. Here two torch paths on the CPU (the loop oracle and the grouped GEMM, bf16 weights, the tiny cards'
random weights) take the test's draws (B sequences x 13 prompt tokens, then one decode token each): per card, the
draws past the test's old bound (1e-2), how many of them and of the others routed a token apart (any router call,
prefill or decode), and the worst error over the sequences routed alike (the bound the tie-aware test keeps).
"""
import argparse

import torch

from minimoe.generate import Generator
from minimoe.loader import build_model
from minimoe.settings import RunSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cards", nargs="+", default=["qwen3-moe-tiny", "mixtral-tiny", "deepseek-v3-tiny"])
    p.add_argument("--draws", type=int, default=75)
    p.add_argument("--batch", type=int, default=3)
    a = p.parse_args()
    routes: list[torch.Tensor] = []
    print(f"# loop vs grouped, bf16, CPU, {a.draws} draws of {a.batch} x 13 tokens + 1 decode token a card")
    print(f"{'card':18s} {'past 1e-2':>9s} {'of them apart':>13s} {'others apart':>12s} {'worst kept':>10s}  "
          "past 1e-2: (draw, error, tokens apart, error per sequence)")
    for card in a.cards:
        s = RunSettings(device="cpu", dtype="bf16")
        model, cfg, _ = build_model(card, "dummy", dtype=torch.bfloat16, device="cpu", settings=s, seed=2)
        for m in model.modules():
            if type(m).__name__ == "Router":
                m.register_forward_hook(lambda mod, inp, out: routes.append(out[-1].detach().sort(dim=-1).values))

        def run(experts, ids, nxt):
            s.experts = experts
            routes.clear()
            gen = Generator(model, a.batch, 32)
            with torch.inference_mode():
                gen.prefill(ids)
                step = gen.cache.step(1, gen.host_len)
                out = model(nxt[:, None], step, gen.cache, select=-1).float().reshape(a.batch, -1)
            return out, list(routes)

        g = torch.Generator().manual_seed(0)
        past, past_apart, other_apart, worst = [], 0, 0, 0.0
        for i in range(a.draws):
            ids = torch.randint(0, cfg.vocab_size, (a.batch, 13), generator=g)
            nxt = torch.randint(0, cfg.vocab_size, (a.batch,), generator=g)
            ref, r_ref = run("loop", ids, nxt)
            out, r_out = run("grouped", ids, nxt)
            apart = torch.zeros(a.batch, dtype=torch.bool)
            tokens = 0
            for x, y in zip(r_ref, r_out):
                diff = (x != y).any(dim=-1)                                   # [B * S]
                tokens += int(diff.sum())
                apart |= diff.view(a.batch, -1).any(dim=-1)
            err = ((out - ref).norm() / ref.norm()).item()
            if (~apart).any():
                keep = ~apart
                worst = max(worst, ((out[keep] - ref[keep]).norm() / ref[keep].norm()).item())
            if err > 1e-2:
                past_apart += bool(apart.any())
                per_seq = ((out - ref).norm(dim=-1) / ref.norm(dim=-1)).tolist()
                past.append((i, round(err, 4), tokens, [round(v, 4) for v in per_seq]))
            else:
                other_apart += bool(apart.any())
        print(f"{card:18s} {len(past):9d} {past_apart:13d} {other_apart:12d} {worst:10.2e}  {past}", flush=True)


if __name__ == "__main__":
    main()
