"""Guards speculative decoding: greedy equals plain greedy token for token on every family (ragged acceptance, ragged prompts, same- and cross-family drafts, the static-shape steps graphs capture, the Triton kernels), rejection sampling preserves the target's distribution (chi-square), rollback leaves no rejected entry visible in either cache, synthetic acceptance, the cost model, the flags, the CLIs and the Qwen3 draft cards."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FAMILIES, TINY_CARDS, rel_err
from minimoe import cards, settings as run_settings, spec_cost
from minimoe.__main__ import main as cli_main
from minimoe.bench.roofline import count_params
from minimoe.families import config_from_hf
from minimoe.generate import Generator
from minimoe.loader import build_model
from minimoe.sampling import Sampling, probs
from minimoe.spec_accept import accept_sampled, leading
from minimoe.speculative import SpeculativeGenerator

N = 10                                              # new tokens per test generation
PROMPTS = [[5, 9, 2, 7, 1, 3], [4, 8], [11, 6, 12, 1], [2]]                # ragged prompts, B = 4
DENSE_DRAFT = {"model_type": "qwen3", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 48,
               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
               "max_position_embeddings": 256, "tie_word_embeddings": True}
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}   # chi-square at p = 0.001, by dof


def perturbed(model, scale: float = 0.15, seed: int = 1):
    """A copy-in-place of `model` with noise on every weight: a draft that agrees often, not always."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=g) * scale * p.float().std().item()).to(p.device, p.dtype))
    return model


def plain(target, prompts, n=N, stop_ids=()):
    return Generator(target, len(prompts), max(map(len, prompts)) + n + 8).generate(prompts, n, stop_ids)


def spec_for(target, draft, G, prompts=PROMPTS, n=N, **kw):
    return SpeculativeGenerator(target, draft, len(prompts), SpeculativeGenerator.positions(
        max(map(len, prompts)), n, G), G, **kw)


def run_rounds(spec, prompts, n=N, reference=None):
    """generate(), one round at a time, recording how many tokens each live sequence emitted per round."""
    with torch.inference_mode():
        st = spec.start(prompts, n, reference=reference)
        steps = []
        while not bool(st.done.all()):
            before = st.n_out.clone()
            live = ~st.done
            spec.round(st)
            steps.append((st.n_out - before)[live].tolist())
    return st.out[:, :n], steps


def assert_exact_and_ragged(target, draft, G, want, prompts=PROMPTS, expect_ragged=True):
    got, steps = run_rounds(spec_for(target, draft, G, prompts), prompts)
    assert torch.equal(got, want), f"G={G}"
    if expect_ragged and G > 1:
        assert any(len(set(s)) > 1 for s in steps), f"no round with ragged acceptance: {steps}"


# ---- greedy: token for token with plain greedy ------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_plain_on_each_hf_family(family, hf_checkpoint):
    folder, _ = hf_checkpoint(family)
    target, _, _ = build_model(str(folder), "auto", dtype=torch.float32)
    same, _, _ = build_model(str(folder), "auto", dtype=torch.float32)
    perturbed(same)
    want = plain(target, PROMPTS)
    for G in (1, 3, 5):
        assert_exact_and_ragged(target, same, G, want)
    other, _ = hf_checkpoint(FAMILIES[(FAMILIES.index(family) + 1) % len(FAMILIES)])
    cross, _, _ = build_model(str(other), "auto", dtype=torch.float32)
    assert_exact_and_ragged(target, cross, 3, want, expect_ragged=False)   # another family: mostly rejected


@pytest.mark.parametrize("card", TINY_CARDS)
def test_greedy_equals_plain_on_each_tiny_card(card, tmp_path):
    target, _, _ = build_model(card, "dummy", dtype=torch.float32, seed=0)
    same, _, _ = build_model(card, "dummy", dtype=torch.float32, seed=0)
    want = plain(target, PROMPTS)
    assert_exact_and_ragged(target, perturbed(same, 0.5), 3, want)
    (tmp_path / "config.json").write_text(json.dumps(DENSE_DRAFT))
    dense, _, _ = build_model(str(tmp_path), "dummy", dtype=torch.float32, seed=4)
    for G in (1, 5):
        assert_exact_and_ragged(target, dense, G, want, expect_ragged=False)


def test_self_draft_keeps_every_proposal():
    target, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0)
    spec = spec_for(target, target, 3)
    assert torch.equal(spec.generate(PROMPTS, N), plain(target, PROMPTS))
    st = spec.stats()
    assert st["acceptance_rate"] == 1.0 and st["mean_accepted_len"] == 4.0
    assert spec.n_rounds == math.ceil((N - 1) / 4)                       # 9 tokens after the prefill's, 4 a round


def test_stop_ids_match_plain_generate():
    target, _, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, seed=0)
    draft, _, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, seed=0)
    free = plain(target, PROMPTS, 16)
    stop = (int(free[0, 3]), int(free[2, 7]))                            # two rows stop early, at different steps
    want = plain(target, PROMPTS, 16, stop)
    got = spec_for(target, perturbed(draft, 0.3), 4, n=16).generate(PROMPTS, 16, stop)
    assert torch.equal(got, want)


class _StaticStep:
    """What graphs.AppendGraph captures (the static-shape step over the whole cache), run eagerly on the CPU."""

    def __init__(self, gen):
        self.gen = gen

    def run(self, tokens):
        return self.gen.forward_step(tokens, None)


@pytest.mark.parametrize("card", ["qwen3-moe-tiny", "deepseek-v2-lite-tiny"])
def test_the_static_steps_graphs_capture_equal_plain(card):
    target, _, _ = build_model(card, "dummy", dtype=torch.float32, seed=0)
    draft, _, _ = build_model(card, "dummy", dtype=torch.float32, seed=0)
    G = 3
    spec = spec_for(target, perturbed(draft, 0.5), G)
    spec.draft_graphs = {S: _StaticStep(spec.draft) for S in (1, 2)}
    spec.verify_graphs = {G + 1: _StaticStep(spec.target)}
    assert torch.equal(spec.generate(PROMPTS, N), plain(target, PROMPTS))


class _EagerRoundGraph:
    """graphs.RoundGraph on a CPU: 'replay' runs the captured round (static-shape steps, in-place state),
    and the capture's warm-up and restore happen as on the GPU."""
    captures = 0

    def __init__(self, run, touched, warmup: int = 2):
        saved = [t.clone() for t in touched]
        for _ in range(warmup + 1):                       # warm-ups and the capture, each undone
            run()
            for t, v in zip(touched, saved):
                t.copy_(v)
        self.run, self.state = run, None
        _EagerRoundGraph.captures += 1

    @staticmethod
    def supported(device) -> bool:
        return True

    def replay(self) -> None:
        self.run()


def test_whole_round_graphs_equal_plain_and_rebind(monkeypatch, tmp_path):
    """The whole-round path (bind a static state, replay the captured round, host bounds) on the CPU:
    greedy and synthetic acceptance equal plain greedy, across generations that reuse one round graph
    (and a new one for a new G), with the same statistics an eager run gives."""
    import minimoe.spec_state as spec_state
    monkeypatch.setattr(spec_state, "RoundGraph", _EagerRoundGraph)
    target, _, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, seed=0)
    draft, _, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, seed=0)
    perturbed(draft, 0.5)
    want = plain(target, PROMPTS)
    spec = spec_for(target, draft, 3)
    spec.draft_graphs = {S: _StaticStep(spec.draft) for S in (1, 2)}        # "graphs on"
    eager = spec_for(target, draft, 3)
    _EagerRoundGraph.captures = 0
    for G in (3, 3, 2):
        spec.gamma = eager.gamma = G
        assert torch.equal(spec.generate(PROMPTS, N), want) and spec.rounds_graphed
        assert torch.equal(eager.generate(PROMPTS, N), want) and not eager.rounds_graphed
        assert spec.stats() == eager.stats()
    assert _EagerRoundGraph.captures == 2                       # one per G; the second G=3 run rebinds
    (tmp_path / "config.json").write_text(json.dumps(DENSE_DRAFT))
    dense, _, _ = build_model(str(tmp_path), "dummy", dtype=torch.float32, seed=4)
    ref = plain(target, PROMPTS, 30)
    synth = spec_for(target, dense, 4, n=30, draft_accept=0.6)
    synth.draft_graphs = {S: _StaticStep(synth.draft) for S in (1, 2)}
    assert torch.equal(synth.generate(PROMPTS, 30, reference=ref), ref) and synth.rounds_graphed
    assert 0.3 < synth.stats()["alpha"] < 0.9
    sampled = spec_for(target, draft, 3, sampling=Sampling(temperature=1.0))
    sampled.draft_graphs = {S: _StaticStep(sampled.draft) for S in (1, 2)}
    sampled.verify_graphs = {4: _StaticStep(sampled.target)}
    sampled.generate(PROMPTS, N)
    assert not sampled.rounds_graphed                           # rejection sampling keeps eager rounds


def test_graph_safe_paths_under_speculation():
    """The settings a GPU run graphs: grouped experts (sync-free) and the Triton decode attention, which
    reads each sequence's device length after rollbacks (interpreted on the CPU; the fused MoE and the
    Triton small ops take seconds per step interpreted: their own tests cover them against the oracles)."""
    s = run_settings.RunSettings(device="cpu", dtype="fp32", experts="grouped", attn="triton")
    target, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0, settings=s)
    draft, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0,
                              settings=run_settings.RunSettings(**vars(s)))
    prompts, n = PROMPTS[:2], 5
    spec = spec_for(target, perturbed(draft, 0.5), 2, prompts, n)
    assert torch.equal(spec.generate(prompts, n), plain(target, prompts, n))


# ---- rollback: nothing rejected stays visible ---------------------------------------------------------

def _valid_entries(gen, b: int, n: int) -> list:
    c = gen.cache
    return [c.latent[:, b, :n]] if c.mla else [c.k[:, b, :n], c.v[:, b, :n]]


def _check_caches(spec, st, models) -> None:
    """Each cache's length is every emitted token but the newest (the draft one fewer after a fully kept
    round), and its valid part equals a fresh prefill of those tokens; the next step over the whole static
    cache (stale entries masked) gives the fresh cache's logits."""
    full = [p + st.out[b, :int(st.n_out[b])].tolist() for b, p in enumerate(PROMPTS)]
    for gen, model in zip((spec.target, spec.draft), models):
        lengths = gen.cache.lengths.tolist()
        for b, n in enumerate(lengths):
            lag = int(st.lag[b]) if gen is spec.draft else 0
            assert n == len(full[b]) - 1 - lag, (b, n, len(full[b]), lag)
        nxt = torch.tensor([[full[b][n]] for b, n in enumerate(lengths)])       # the first token not cached
        saved = gen.cache.lengths.clone()
        with torch.inference_mode():
            logits = model(nxt, gen.cache.step(1, None), gen.cache, select=-1)     # [B, V]
        gen.cache.lengths.copy_(saved)
        for b, n in enumerate(lengths):
            fresh = Generator(model, 1, 64)
            fresh.append(torch.tensor([full[b][:n]]))
            for mine, ref in zip(_valid_entries(gen, b, n), _valid_entries(fresh, 0, n)):
                assert rel_err(mine, ref) <= 1e-5
            assert rel_err(logits[b], fresh.append(torch.tensor([[full[b][n]]]))[0, -1]) <= 1e-5


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v3-tiny"])
def test_rollback_leaves_both_caches_as_a_plain_prefill_would(card):
    """Checked after every round of a generation with ragged acceptance, on a GQA and an MLA cache."""
    target, cfg, _ = build_model(card, "dummy", dtype=torch.float32, seed=0)
    draft, _, _ = build_model(card, "dummy", dtype=torch.float32, seed=0)
    spec = spec_for(target, perturbed(draft, 0.1), 2)
    lags = 0
    with torch.inference_mode():
        st = spec.start(PROMPTS, N)
        while not bool(st.done.all()):
            spec.round(st)
            lags += int(st.lag.sum())
            _check_caches(spec, st, (target, draft))
    assert lags > 0                                # some round kept all its proposals: the draft lagged


# ---- rejection sampling: the target's distribution, exactly ------------------------------------------------

def chi2(counts: torch.Tensor, p: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic of integer counts [V] against probabilities p [V], over p's support (and no
    count may fall outside it) -> (statistic, degrees of freedom)."""
    n = counts.sum()
    support = p > 0
    assert counts[~support].sum() == 0, "a token the target gives probability 0 was emitted"
    e = p[support].double() * n
    return float(((counts[support].double() - e) ** 2 / e).sum()), int(support.sum()) - 1


def assert_distribution(tokens: torch.Tensor, p: torch.Tensor) -> None:
    stat, dof = chi2(torch.bincount(tokens, minlength=p.numel()), p)
    assert stat < CHI2_999[dof], f"chi-square {stat:.1f} with {dof} dof"


CASES = {   # target p_0..p_2 and draft q_0..q_1 over 6 tokens; the sampling applied to log p
    "overlapping": ([[.30, .25, .20, .15, .10, 0], [.05, .05, .10, .20, .25, .35], [.2, .2, .2, .2, .1, .1]],
                    [[.10, .10, .30, .30, .10, .10], [.40, .10, .10, .10, .10, .20]], Sampling(temperature=1.0)),
    "draft off the target's support": ([[.5, .5, 0, 0, 0, 0], [0, 0, .25, .25, .25, .25], [.1, .1, .1, .1, .3, .3]],
                                       [[0, .2, .8, 0, 0, 0], [.5, 0, .5, 0, 0, 0]], Sampling(temperature=1.0)),
    "top-k and temperature": ([[.30, .25, .20, .15, .07, .03], [.05, .05, .10, .20, .25, .35], [.4, .2, .1, .1, .1, .1]],
                              [[.10, .10, .30, .30, .10, .10], [.40, .10, .10, .10, .10, .20]],
                              Sampling(temperature=0.7, top_k=4)),
}


@pytest.mark.parametrize("case", CASES)
def test_rejection_sampling_preserves_the_target_distribution(case):
    """60,000 rounds of G = 2: the first emitted token follows p_0, the second (in rounds that kept d_0)
    p_1, the bonus after both were kept p_2; d_0 is kept with probability sum(min(p_0, q_0))."""
    p_rows, q_rows, s = CASES[case]
    R, g = 60_000, torch.Generator().manual_seed(0)
    logits = torch.tensor(p_rows).log()                                          # [3, V]
    p = probs(logits, s)                                                         # the target's distributions
    q = torch.tensor(q_rows)                                                     # [2, V]
    drafts = torch.stack([torch.multinomial(q[i], R, replacement=True, generator=g) for i in range(2)], 1)
    a, extra = accept_sampled(drafts, q[None].expand(R, -1, -1), logits[None].expand(R, -1, -1), s, g)
    assert_distribution(torch.where(a > 0, drafts[:, 0], extra), p[0])
    kept = a >= 1
    assert_distribution(torch.where(a[kept] > 1, drafts[kept, 1], extra[kept]), p[1])
    assert_distribution(extra[a == 2], p[2])
    rate, want = kept.double().mean().item(), torch.minimum(p[0], q[0]).sum().item()
    assert abs(rate - want) < 4 * math.sqrt(want * (1 - want) / R) + 1e-9


def test_speculative_sampling_on_a_model_follows_the_target():
    """One round on 3,000 copies of a prompt: the first token it emits follows the target's own sampling
    distribution for that context (temperature 0.1, top-k 8), whatever the perturbed draft proposed."""
    torch.manual_seed(0)
    target, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0)
    draft, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0)
    s, R, prompt, tok = Sampling(temperature=0.1, top_k=8), 3000, [5, 9, 2, 7], 17
    spec = SpeculativeGenerator(target, perturbed(draft, 0.1), R, 12, 2, s)
    spec.generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        st = spec.start([prompt] * R, 3)
        st.tok.fill_(tok)                             # the same context for every row
        spec.round(st)
    p = probs(Generator(target, 1, 8).append(torch.tensor([prompt + [tok]]))[:, -1], s)[0]
    assert 0.05 < spec.stats()["acceptance_rate"] < 0.95                        # both branches were taken
    assert_distribution(st.out[:, 1], p)


# ---- synthetic acceptance ---------------------------------------------------------------------------------

def test_synthetic_acceptance_is_the_reference_at_rate_A(tmp_path):
    target, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0)
    (tmp_path / "config.json").write_text(json.dumps(DENSE_DRAFT))
    dense, _, _ = build_model(str(tmp_path), "dummy", dtype=torch.float32, seed=4)
    n = 40
    ref = plain(target, PROMPTS, n)
    for A in (0.0, 0.6, 1.0):
        spec = spec_for(target, dense, 4, n=n, draft_accept=A)
        assert torch.equal(spec.generate(PROMPTS, n, reference=ref), ref)
        st = spec.stats()
        assert st["synthetic"] and st["draft_accept"] == A and st["diverged"] == 0
        assert abs(st["alpha"] - A) < 0.12, st
    with pytest.raises(ValueError, match="needs the plain greedy run's tokens"):
        spec.generate(PROMPTS, n)
    with pytest.raises(ValueError, match="needs greedy decoding"):
        SpeculativeGenerator(target, dense, 4, 64, 4, Sampling(temperature=1.0), draft_accept=0.5)


def test_leading_counts_the_first_run_of_true():
    ok = torch.tensor([[True, True, False, True], [False, True, True, True], [True] * 4])
    assert leading(ok).tolist() == [2, 0, 4]


# ---- the cost model and --gamma auto ----------------------------------------------------------------------

def test_expected_tokens_and_rounds():
    assert spec_cost.expected_tokens(0.0, 4) == 1 and spec_cost.expected_tokens(1.0, 4) == 5
    assert spec_cost.expected_tokens(0.5, 2) == pytest.approx(1.75)
    one = spec_cost.expected_rounds(0.7, 4, 1, 400)
    assert one == pytest.approx(400 / spec_cost.expected_tokens(0.7, 4), rel=0.03)   # one sequence: renewal rate
    assert spec_cost.expected_rounds(0.7, 4, 64, 400) > 1.03 * one                   # a batch waits for its slowest
    assert spec_cost.expected_rounds(1.0, 4, 8, 20) == 4 and spec_cost.expected_rounds(0.0, 4, 8, 20) == 20


def _times(verify_ratio: float) -> spec_cost.StepTimes:
    """Target step 1 ms, draft 0.1 ms; the verify of G+1 tokens costs 1 + verify_ratio * G ms."""
    t = spec_cost.StepTimes(batch=4, target_ms=1.0, draft_ms=0.1, draft2_ms=0.11)
    for G in spec_cost.AUTO_GAMMAS:
        t.verify_ms[G] = 1.0 + verify_ratio * G
        t.round_ms[G] = 0.11 + 0.1 * (G - 1) + t.verify_ms[G] + 0.02
    return t


def test_the_cost_models_rounds_match_synthetic_runs():
    """The model's token accounting (rounds until the batch's slowest sequence is done, alpha i.i.d.)
    against real runs at synthetic acceptance, where alpha is known: timing aside, this is the model."""
    target, _, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, seed=0)
    prompts, n, G, A = [[1, 2, 3]] * 6, 40, 3, 0.7
    ref = plain(target, prompts, n)
    rounds = []
    for seed in range(4):
        spec = spec_for(target, target, G, prompts, n, draft_accept=A, seed=seed)
        spec.generate(prompts, n, reference=ref)
        rounds.append(spec.n_rounds)
    want = spec_cost.expected_rounds(A, G, len(prompts), n - 1)
    assert abs(sum(rounds) / len(rounds) / want - 1) < 0.12, (rounds, want)


def test_gamma_auto_picks_the_best_or_switches_off():
    G, preds = spec_cost.choose_gamma(_times(0.05), alpha=0.8, n_tokens=127)
    best = max(preds, key=lambda p: p["speedup"])
    assert G == best["gamma"] > 0 and best["speedup"] > 1.5
    assert spec_cost.choose_gamma(_times(1.0), alpha=0.8)[0] == 0          # verify as dear as G+1 steps: off
    assert spec_cost.choose_gamma(_times(0.05), alpha=0.0)[0] == 0         # nothing accepted: off
    G, preds = spec_cost.choose_gamma(_times(0.3), alpha=0.5)
    assert G == 0 or max(p["speedup"] for p in preds) >= 1 + spec_cost.AUTO_MARGIN


def test_step_times_are_measured_and_leave_the_generator_usable():
    target, _, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=0)
    draft, _, _ = build_model("mixtral-tiny", "dummy", dtype=torch.float32, seed=0)
    spec = spec_for(target, draft, 3)
    calls = []
    forward = spec.draft_forward
    spec.draft_forward = lambda tokens: calls.append(tokens.shape[1]) or forward(tokens)
    t = spec_cost.measure_step_times(spec, PROMPTS, N, gammas=(1, 3), iters=2)
    spec.draft_forward = forward
    assert t.target_ms > 0 and t.draft_ms > 0 and set(t.verify_ms) == set(t.round_ms) == {1, 3}
    assert all(v > 0 for v in t.round_ms.values()) and not t.eager_round_ms        # no round graphs on a CPU
    # (timings on a shared CPU are too noisy to compare; what a round runs is counted instead:)
    # 2 warm-ups + 2 timed calls each of T_D and T_D(2), then per G 4 rounds of a 2-token step and G-1 single ones
    assert calls == [1] * 4 + [2] * 4 + [2] * 4 + ([2] + [1] * 2) * 4, calls
    assert torch.equal(spec.generate(PROMPTS, N), plain(target, PROMPTS))


# ---- flags, CLIs, cards ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(gamma="3"), "--gamma needs --draft"),
    (dict(draft_accept=0.5), "--draft-accept needs --draft"),
    (dict(draft_weights="dummy"), "--draft-weights needs --draft"),
    (dict(draft="qwen3-0.6b"), "--draft needs --gamma"),
    (dict(draft="qwen3-0.6b", gamma="17"), "--gamma 17: an integer 1..16 draft tokens a round, auto, or 0"),
    (dict(draft="qwen3-0.6b", gamma="-1"), "--gamma -1: an integer"),
    (dict(draft="qwen3-0.6b", gamma="2", draft_accept=1.5), r"--draft-accept must be in \[0, 1\]"),
])
def test_speculation_flags_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        run_settings.RunSettings(device="cpu", **kw).resolve()


def gen_cli(capsys, *args):
    rc = cli_main(["generate", "--model", "olmoe-tiny", "--prompt-ids", "3,1,4,1,5", "--max-new-tokens", "8",
                   "--batch", "2", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_with_a_draft_equals_plain_and_says_how(capsys):
    rc, out, err = gen_cli(capsys, "--json", "-")
    assert rc == 0, err
    want = json.loads(out)["new_ids"]
    rc, out, err = gen_cli(capsys, "--draft", "mixtral-tiny", "--gamma", "3", "--json", "-")
    got = json.loads(out)
    assert rc == 0 and got["new_ids"] == want and got["speculative"]["gamma"] == 3
    rc, out, err = gen_cli(capsys, "--draft", "olmoe-tiny", "--gamma", "auto", "--draft-accept", "0.7")
    assert rc == 0, err
    line = err.splitlines()[0]                                   # the summary on stderr, the tokens alone on stdout
    assert line.startswith("# speculative decoding") and ("synthetic" in line or "off" in line)
    assert [list(map(int, r.split())) for r in out.splitlines()] == want


@pytest.mark.parametrize("args, message", [
    (["--draft", "qwen3-0.6b", "--gamma", "2"], "its vocabulary has 151936 tokens, the target's 512"),
    (["--draft", "no-such-model", "--gamma", "2"], "--draft no-such-model: unknown model"),
    (["--draft", "mixtral-tiny", "--gamma", "2", "--draft-accept", "0.5", "--temperature", "1"],
     "--draft-accept needs greedy decoding"),
    (["--gamma", "2"], "--gamma needs --draft"),
])
def test_generate_refuses_bad_speculation_flags(args, message, capsys):
    rc, out, err = gen_cli(capsys, *args)
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def _bench_spec(capsys, tmp_path, gamma: str, accept: str, bs: str) -> tuple[str, dict]:
    """bench.py olmoe-tiny with the mixtral-tiny draft on the CPU, fixed ceilings: (stdout, the speculative result).
    The JSON's settings record --gamma as given: a number, or the string auto."""
    from minimoe.bench import cli as bench
    ceilings = tmp_path / "ceilings.json"
    ceilings.write_text(json.dumps({"bandwidth_GBps": 10.0, "matmul_TFLOPs": 0.1}))
    rc = bench.main(["--device", "cpu", "--model", "olmoe-tiny", "--draft", "mixtral-tiny", "--gamma", gamma,
                     "--draft-accept", accept, "--bs", bs, "--input-len", "6", "--output-len", "8", "--warmup", "0",
                     "--iters", "1", "--ceilings", str(ceilings)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    j = json.loads(out.strip().splitlines()[-1])
    assert j["settings"]["gamma"] == (gamma if gamma == "auto" else int(gamma))
    return out, j["results"][0]["speculative"]


def test_bench_reports_the_speculative_metrics(capsys, tmp_path):
    out, spec = _bench_spec(capsys, tmp_path, "2", "0.8", "2")
    st = spec["stats"]
    assert st["synthetic"] and spec["acceptance"].startswith("synthetic") and spec["tokens_equal_plain"] == 1.0
    for key in ("acceptance_rate", "mean_accepted_len", "tokens_per_target_forward", "alpha"):
        assert st[key] > 0
    assert 0 < spec["draft_share"] < 1 and spec["speedup_e2e"] > 0 and spec["predicted"]["speedup"] > 0
    assert spec["touched"]["per_verify"] >= spec["touched"]["per_plain_step"] > 0
    assert "speed-up e2e" in out and "spec G=2 bs2 6/8" in out
    m = spec["metrics"]                       # rounds emit several tokens: a mean per token, no p90 to report
    assert m["itl_p90_ms"] is None and m["itl_median_ms"] > 0 and "a mean" in m["itl_note"]


def test_bench_auto_gamma_off_says_why(capsys, tmp_path):
    """--gamma auto at a hopeless acceptance: the row runs plain decoding (G 0), shows the best prediction, and a
    footnote says the cost model's bar was not reached."""
    out, spec = _bench_spec(capsys, tmp_path, "auto", "0.01", "1")
    assert spec["gamma"] == 0 and "plain decoding" in spec["note"]
    assert "0 (auto)" in out and "best " in out and "# G 0 (auto): no gamma's predicted speed-up reached" in out


PUBLISHED_NON_EMBEDDING = {"Qwen3-0.6B": 0.44e9, "Qwen3-1.7B": 1.4e9, "Qwen3-4B": 3.6e9, "Qwen3-8B": 6.95e9}
PUBLISHED_TOTAL = {"Qwen3-0.6B": 0.6e9, "Qwen3-1.7B": 1.7e9, "Qwen3-4B": 4.0e9, "Qwen3-8B": 8.2e9}


@pytest.mark.parametrize("name", PUBLISHED_NON_EMBEDDING)
def test_qwen3_draft_cards_match_the_published_counts(name):
    """Qwen's model cards give the non-embedding count to 2-3 digits (1% here) and the total rounded to
    2 digits (1.7B is 1.72B: its rounding). Non-embedding excludes the input embedding and an untied head."""
    cfg = config_from_hf(cards.load_card(name))
    pc = count_params(cfg)
    head = 0 if cfg.tie_word_embeddings else pc.embed
    assert abs((pc.total - pc.embed - head) / PUBLISHED_NON_EMBEDDING[name] - 1) <= 0.01
    assert abs(pc.total / PUBLISHED_TOTAL[name] - 1) <= 0.013
    assert cards.find_card(name.lower()) is not None and cfg.vocab_size == 151936


@pytest.mark.gpu
def test_graphed_speculation_equals_eager_and_plain_on_the_gpu():
    s = run_settings.RunSettings(device="cuda", dtype="fp32", experts="fused")
    target, _, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, device="cuda", seed=0, settings=s)
    draft, _, _ = build_model("qwen3-moe-tiny", "dummy", dtype=torch.float32, device="cuda", seed=0,
                              settings=run_settings.RunSettings(**vars(s)))
    perturbed(draft, 0.5)
    want = plain(target, PROMPTS, 24)
    for G in (1, 3, 5):
        eager = spec_for(target, draft, G, n=24)
        graphed = spec_for(target, draft, G, n=24)
        graphed.enable_graphs([G], prefill_lengths=[max(map(len, PROMPTS))])
        assert torch.equal(eager.generate(PROMPTS, 24).cpu(), want.cpu())
        assert torch.equal(graphed.generate(PROMPTS, 24).cpu(), want.cpu())
        assert graphed.stats()["acceptance_rate"] > 0      # (equal only up to near-ties of the draft's argmax)
