"""bench.py --draft: speculative decoding timed beside plain decoding of the same prompts, in one run.

For each configuration, bench/cli.py first times plain decoding (the baseline: same prompts, same
weights, same graphs); then this file, with the same warm-up and timed runs (the median E2E run
is reported), times speculative decoding and reports what the issue asks for:
  * acceptance rate (kept / proposed), mean accepted length (tokens per round per sequence, EAGLE's
    tau), tokens per target forward (the batch's tokens over its forwards, the prefill included),
    alpha (per-proposal acceptance, the cost model's input), and whether it was synthetic;
  * the draft's share of the decode time and the verify's: from CUDA events around each phase when rounds
    run eagerly, from the measured step times over the measured round when a round is one CUDA graph;
  * distinct experts per MoE layer touched by one verify of B x (G+1) tokens vs one plain step of
    B tokens (an eager pass with instrument.ExpertLoad: the MoE-specific cost of verifying);
  * speed-up over the plain run: E2E and decode-only (E2E minus TTFT; TTFT includes the draft's
    prefill), and the cost model's prediction from measured step times and the run's own alpha
    (spec_cost.py), which models the decode phase;
  * with greedy real acceptance, whether the tokens equal plain greedy decoding's.
"""
from __future__ import annotations

import statistics

from ..runtime import UsageError
from ..spec_cli import load_draft
from ..speculative import SpeculativeGenerator
from ..loader import read_config
from .. import spec_cost
from .prompts import length_sampler, make_prompts
from .report import row
from .timing import Clock, summarize

COLUMNS = ("config", "G", "acceptance", "acc rate", "accepted len", "tok/fwd", "draft %", "verify %",
           "experts verify/step", "speed-up e2e", "decode", "predicted", "tokens = plain")


def validate(args, cfg, configs) -> None:
    """Room for G draft tokens past each configuration's last position, in both models."""
    dcfg, _ = read_config(args.draft)
    G = max(spec_cost.AUTO_GAMMAS) if args.gamma == "auto" else int(args.gamma)
    for b, n_in, n_out in configs:
        longest = length_sampler(n_in).longest if isinstance(n_in, str) else n_in
        need = SpeculativeGenerator.positions(longest, n_out, G)
        for who, c in (("target", cfg), ("draft", dcfg)):
            if need > c.max_position_embeddings:
                raise UsageError(f"--draft: {longest} + {n_out} tokens + G={G} draft tokens need {need} positions, "
                                 f"more than the {who}'s max_position_embeddings {c.max_position_embeddings}")


def timed_speculative(spec, prompts, n_out: int, reference=None) -> dict:
    """One timed speculative generation: TTFT (both prefills), E2E, and the time in each phase of the
    rounds (draft, verify, accept), from marks on the device timeline (the host clock on a CPU)."""
    clock = Clock(spec.target.device)
    spec.clock = clock
    clock.mark()
    tokens = spec.generate(prompts, n_out, reference=reference)
    spec.clock = None
    ms = clock.intervals_ms()      # [TTFT, (draft, verify, accept) x rounds], or [TTFT, round x rounds] graphed
    k = spec.marks_per_round
    phases = [sum(ms[1 + i::k]) for i in range(k)] if k == 3 else None
    return {"ttft_ms": ms[0], "e2e_ms": sum(ms), "phase_ms": phases, "tokens": tokens, "stats": spec.stats(),
            "rounds_graphed": spec.rounds_graphed}


def median_run(spec, prompts, n_out: int, reference, warmup: int, iters: int) -> dict:
    """warmup untimed runs, then the median-E2E run of iters timed ones (as bench.py reports plain runs)."""
    for _ in range(warmup):
        timed_speculative(spec, prompts, n_out, reference)
    runs = sorted((timed_speculative(spec, prompts, n_out, reference) for _ in range(iters)), key=lambda r: r["e2e_ms"])
    return runs[len(runs) // 2]


class SpecBench:
    """The draft model, loaded once, and the speculative rows of every configuration."""

    def __init__(self, args, s):
        self.args, self.s = args, s
        self.draft, self.dcfg = load_draft(s)
        self.rows = []

    def _spec(self, model, b: int, longest: int, n_out: int, use_graphs: bool, gammas):
        s = self.s
        spec = SpeculativeGenerator(model, self.draft, b, SpeculativeGenerator.positions(longest, n_out, max(gammas)),
                                    max(gammas), draft_accept=s.draft_accept, seed=s.seed)
        if use_graphs:
            spec.enable_graphs(gammas, prefill_lengths=[] if s.eager_prefill else [longest])
        return spec

    def run(self, model, cfg, res: dict, b: int, n_in, n_out: int, use_graphs: bool) -> dict:
        """Speculative decoding for one configuration; res is the plain run's result (the baseline)."""
        s, args = self.s, self.args
        prompts = make_prompts(cfg.vocab_size, b, n_in, s.seed)              # the plain run's prompts
        longest, mean_in = max(map(len, prompts)), sum(map(len, prompts)) / b
        auto = s.gamma == "auto"
        gammas = spec_cost.AUTO_GAMMAS if auto else (int(s.gamma),)
        spec = self._spec(model, b, longest, n_out, use_graphs, gammas)
        plain = spec.target.generate(prompts, n_out)                         # plain greedy tokens (untimed)
        reference = plain if s.draft_accept is not None else None
        times = spec_cost.measure_step_times(spec, prompts, n_out, gammas)
        out = {"draft": s.draft, "draft_params_B": sum(p.numel() for p in self.draft.parameters()) / 1e9,
               "auto": auto, "step_times": times.to_dict(),
               "acceptance": f"synthetic (--draft-accept {s.draft_accept})" if reference is not None else "real"}
        if auto:
            alpha = s.draft_accept if s.draft_accept is not None else spec_cost.pilot_alpha(spec, prompts, n_out)
            G, preds = spec_cost.choose_gamma(times, alpha, n_out - 1)
            out.update(auto_alpha=alpha, auto_predictions=preds)
        else:
            G = gammas[0]
        out["gamma"] = G
        if G == 0:      # speculation off: the run is plain decoding, already timed
            out.update(speedup_e2e=1.0, speedup_decode=1.0, note="speculation off (cost model): plain decoding")
            best = max(out["auto_predictions"], key=lambda p: p["speedup"])
            self.rows.append((f"bs{b} {n_in}/{n_out}", "0 (auto)", "synthetic" if reference is not None else "real")
                             + ("-",) * 6 + ("1.00x", "1.00x", f"best {best['speedup']:.3f}x @G={best['gamma']}",
                                             "-"))
            return out
        spec.gamma = G
        run = median_run(spec, prompts, n_out, reference, args.warmup, args.iters)
        out.update(self._metrics(run, res, b, mean_in, n_out, times, G, plain))
        out["touched"] = self._touched(spec, prompts, n_out, reference, res)
        self.rows.append(self._row(f"bs{b} {n_in}/{n_out}", out, auto))
        return out

    def _metrics(self, run, res, b, mean_in, n_out, times, G, plain) -> dict:
        st, m0 = run["stats"], res["metrics"]
        decode_ms = run["e2e_ms"] - run["ttft_ms"]
        m = summarize({"ttft_ms": run["ttft_ms"], "e2e_ms": run["e2e_ms"],
                       "itl_ms": [decode_ms / max(1, n_out - 1)]}, b, mean_in, n_out)
        # A round emits several tokens at once, so there is no per-token distribution: the mean, and no p90.
        m.update(itl_p90_ms=None, itl_note="speculative: decode time / (new tokens - 1), a mean, not a median")
        pred = spec_cost.predict(times, st["alpha"], G, n_out - 1)
        same = (run["tokens"] == plain).float().mean().item()
        if run["phase_ms"] is not None:                   # eager rounds: marks between the phases
            draft, verify, accept = run["phase_ms"]
            phases = {"draft": draft, "verify": verify, "accept": accept}
            draft_share, verify_share = draft / max(1e-9, decode_ms), verify / max(1e-9, decode_ms)
        else:       # one graph per round: the shares of the measured step times in the measured round
            phases = None
            draft_share = (times.draft2_ms + (G - 1) * times.draft_ms) / times.round_ms[G]
            verify_share = times.verify_ms[G] / times.round_ms[G]
        return {"metrics": m, "stats": st, "phase_ms": phases, "rounds_graphed": run["rounds_graphed"],
                "draft_share": draft_share, "verify_share": verify_share,
                "speedup_e2e": m0["e2e_s"] * 1e3 / run["e2e_ms"],
                "speedup_decode": (m0["e2e_s"] * 1e3 - m0["ttft_ms"]) / decode_ms,
                "predicted": pred, "tokens_equal_plain": same}

    def _touched(self, spec, prompts, n_out, reference, res) -> dict | None:
        """Distinct experts per MoE layer: one verify (eager pass) vs one plain decode step (bench/cli.py)."""
        if not spec.target.model.cfg.is_moe:
            return None
        n = min(n_out, 4 * (spec.gamma + 1) + 1)
        with spec.eager():
            spec.count_experts = True
            spec.generate(prompts, n, reference=None if reference is None else reference[:, :n])
            spec.count_experts = False
        verify, step = statistics.mean(spec.verify_touched), res["roofline"]["experts_touched_per_layer"]
        return {"per_verify": verify, "per_plain_step": step, "ratio": verify / step if step else None,
                "n_experts": spec.target.model.cfg.n_experts}

    @staticmethod
    def main_rows(o: dict, label: str) -> list:
        """The speculative run as a row of the main table (bench/report.py columns; ITL = decode time per token)."""
        return [] if o["gamma"] == 0 else [row(f"spec G={o['gamma']} {label}", o["metrics"], None, None,
                                               o["stats"].get("nonfinite"))]

    @staticmethod
    def _row(label, o, auto) -> tuple:
        st, t = o["stats"], o["touched"]
        ex = "-" if t is None else f"{t['per_verify']:.1f}/{t['per_plain_step']:.1f}"
        return (label, f"{o['gamma']}{' (auto)' if auto else ''}", "synthetic" if st["synthetic"] else "real",
                f"{st['acceptance_rate']:.2f}", f"{st['mean_accepted_len']:.2f}",
                f"{st['tokens_per_target_forward']:.2f}", f"{100 * o['draft_share']:.0f}%",
                f"{100 * o['verify_share']:.0f}%", ex, f"{o['speedup_e2e']:.2f}x", f"{o['speedup_decode']:.2f}x",
                f"{o['predicted']['speedup']:.2f}x", f"{100 * o['tokens_equal_plain']:.0f}%")

    def print_table(self) -> None:
        print(f"# speculative decoding: draft {self.s.draft}, gamma {self.s.gamma}; speed-ups against the plain rows "
              f"above (same prompts, same run); predicted = spec_cost.py from measured step times and the run's alpha")
        widths = [max(len(str(r[i])) for r in [COLUMNS] + self.rows) for i in range(len(COLUMNS))]
        for r in [COLUMNS] + self.rows:
            print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
        if any(r[1] == "0 (auto)" for r in self.rows):
            print(f"# G 0 (auto): no gamma's predicted speed-up reached {1 + spec_cost.AUTO_MARGIN:.2f}x (the best is "
                  "shown), so that row ran plain decoding")
