"""Guards generation: greedy generate equals a hand-written prefill+decode loop and a cache-free recompute, sampling never leaves the top-k / nucleus set, KV-cache rollback re-decodes the same tokens, and the static-shape decode step equals the sliced one."""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from minimoe.generate import Generator
from minimoe.sampling import Sampling, sample
from minimoe.loader import build_model

CARDS = ("olmoe-tiny", "deepseek-v3-tiny")          # a GQA cache and an MLA (latent) cache
B, S = 2, 5


@pytest.fixture(scope="module", params=CARDS)
def model(request):
    net, _, _ = build_model(request.param, "dummy", dtype=torch.float32, seed=3)
    return net


def _prompts(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (B, S), generator=torch.Generator().manual_seed(seed))


# ---- greedy ---------------------------------------------------------------------------------------------


def test_greedy_generate_equals_a_manual_loop(model):
    ids, n = _prompts(model.cfg.vocab_size), 12
    got = Generator(model, B, S + n + 1).generate(ids, n)
    gen = Generator(model, B, S + n + 1)            # drive the model directly, no Generator methods
    cache, want = gen.cache, []
    with torch.inference_mode():
        step = cache.step(S, 0)
        tok = model(ids, step, cache, select=-1).argmax(-1)
        cache.advance(step)
        want.append(tok)
        for i in range(n - 1):
            step = cache.step(1, S + i)
            tok = model(tok[:, None], step, cache, select=-1).argmax(-1)
            cache.advance(step)
            want.append(tok)
    assert torch.equal(got, torch.stack(want, dim=1))


def test_cached_decode_equals_recomputing_the_whole_sequence(model):
    """The KV cache is an optimisation: each cached step's logits equal a fresh prefill of the full sequence."""
    ids, n = _prompts(model.cfg.vocab_size, seed=1), 8
    new = Generator(model, B, S + n + 1).generate(ids, n)
    seq = torch.cat([ids, new], dim=1)
    cached = Generator(model, B, S + n + 1)
    with torch.inference_mode():
        cached.prefill(ids)
        for i in range(n):
            step = cached.cache.step(1, S + i)
            logits = model(seq[:, S + i, None], step, cached.cache, select=-1)
            cached.cache.advance(step)
            fresh = Generator(model, B, S + i + 2)
            full = model(seq[:, :S + i + 1], fresh.cache.step(S + i + 1, 0), fresh.cache, select=-1)
            assert rel_err(logits, full) <= 1e-5, f"step {i}"


def test_generate_stops_at_eos(model):
    ids, n = _prompts(model.cfg.vocab_size, seed=2), 10
    free = Generator(model, B, S + n + 1).generate(ids, n)
    eos = int(free[0, 3])                                   # a token sequence 0 emits at step 3
    got = Generator(model, B, S + n + 1).generate(ids, n, stop_ids={eos})
    assert torch.equal(Generator(model, B, S + n + 1).generate(ids, n, stop_ids=eos), got)     # a bare int
    assert got.shape == (B, n)
    for row_free, row in zip(free.tolist(), got.tolist()):
        cut = row_free.index(eos) + 1 if eos in row_free else n
        assert row[:cut] == row_free[:cut] and all(t == eos for t in row[cut:])


def test_generate_stops_early_once_every_row_has_stopped(model, monkeypatch):
    """generate() asks the device whether every row has stopped only every STOP_CHECK_EVERY steps: a batch whose rows
    all stop by column 1 runs no decode step past that check, and its rows are masked as the free run would be."""
    from minimoe import generate as G
    ids, n = _prompts(model.cfg.vocab_size, seed=4), 12
    free = Generator(model, B, S + n + 1).generate(ids, n)
    stops = {int(t) for t in free[:, 1]}                    # every row emits one of these at column 1
    monkeypatch.setattr(G, "STOP_CHECK_EVERY", 3)
    gen = Generator(model, B, S + n + 1)
    calls = []
    real = gen.decode
    monkeypatch.setattr(gen, "decode", lambda tok, own=True: calls.append(own) or real(tok, own=own))
    got = gen.generate(ids, n, stop_ids=stops)
    assert len(calls) == 2                                  # columns 1 and 2; the check before column 3 stops it
    assert torch.equal(got, G.mask_after_stop(free, G.stop_tensor(stops, n, "cpu")))
    assert got.shape == (B, n) and all(int(got[r, -1]) == min(stops) for r in range(B))


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_generate_refuses_a_bad_stop_check_interval(model, monkeypatch, bad):
    from minimoe import generate as G
    monkeypatch.setattr(G, "STOP_CHECK_EVERY", bad)
    with pytest.raises(ValueError, match="STOP_CHECK_EVERY must be an int >= 1"):
        Generator(model, B, S + 4).generate(_prompts(model.cfg.vocab_size), 3, stop_ids=1)


def test_mask_after_stop_keeps_the_first_stop_and_pads_after_it():
    from minimoe.generate import mask_after_stop
    new = torch.tensor([[5, 9, 5, 4], [1, 2, 3, 4], [7, 7, 9, 9]])
    got = mask_after_stop(new, torch.tensor([7, 9]))
    assert got.tolist() == [[5, 9, 7, 7], [1, 2, 3, 4], [7, 7, 7, 7]]
    assert mask_after_stop(new, torch.tensor([], dtype=torch.long)) is new


def test_generator_refuses_bad_shapes(model):
    gen = Generator(model, B, 8)
    with pytest.raises(ValueError, match="prompt batch 3 != generator batch 2"):
        gen.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="9 more tokens do not fit the cache of 8 positions"):
        gen.prefill(torch.zeros(B, 9, dtype=torch.long))
    gen.prefill(torch.zeros(B, 8, dtype=torch.long))           # exactly full: 8 positions are 8 tokens
    with pytest.raises(ValueError, match="1 more tokens do not fit the cache of 8 positions"):
        gen.decode(torch.zeros(B, dtype=torch.long))
    with pytest.raises(ValueError):
        Generator(model, 1, 4, Sampling(temperature=-1.0))
    for n in (0, -1):                                           # no token asked for: refused, not one token
        with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
            Generator(model, B, 8).generate(torch.zeros(B, 4, dtype=torch.long), n)
    with pytest.raises(ValueError, match="temperature 0 is greedy"):                # a filter without sampling
        Generator(model, 1, 4, Sampling(top_k=50))


# ---- sampling ---------------------------------------------------------------------------------------------


def _known_logits(rows: int) -> tuple[torch.Tensor, list]:
    """[rows, 32] logits whose probabilities, in a shuffled order, are 0.4, 0.25, 0.15, 0.1, then a tail."""
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1] + [0.1 / 28] * 28)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    logits = torch.empty(32)
    logits[order] = probs.log()
    return logits.expand(rows, 32).clone(), order.tolist()          # order[i] = id of the i-th likeliest


def _draw(logits, sampling, seed=0):
    torch.manual_seed(seed)
    out = sample(logits, sampling)
    assert out.dtype == torch.int64 and out.shape == logits.shape[:1]
    return out


def test_greedy_sampling_is_argmax():
    logits, order = _known_logits(4)
    assert _draw(logits, Sampling()).tolist() == [order[0]] * 4


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_top_k_only_returns_the_k_likeliest(k, temperature):
    logits, order = _known_logits(4000)
    got = set(_draw(logits, Sampling(temperature=temperature, top_k=k)).tolist())
    assert got == set(order[:k])                    # never outside, and every member actually drawn


@pytest.mark.parametrize("top_p,nucleus", [(0.3, 1), (0.5, 2), (0.6, 2), (0.7, 3), (0.85, 4)])
def test_top_p_only_returns_the_nucleus(top_p, nucleus):
    """Nucleus = the fewest likeliest tokens whose mass reaches top_p (cumulative 0.4, 0.65, 0.8, 0.9;
    no top_p sits on a boundary, where float32 rounding would decide)."""
    logits, order = _known_logits(4000)
    got = set(_draw(logits, Sampling(temperature=1.0, top_p=top_p)).tolist())
    assert got == set(order[:nucleus])


def test_top_k_and_top_p_together_take_the_smaller_set():
    logits, order = _known_logits(4000)
    # top-k renormalises first: 0.5, 0.3125, 0.1875 (cumulative 0.5, 0.8125, 1)
    assert set(_draw(logits, Sampling(temperature=1.0, top_k=3, top_p=0.6)).tolist()) == set(order[:2])
    assert set(_draw(logits, Sampling(temperature=1.0, top_k=2, top_p=0.85)).tolist()) == set(order[:2])


def test_sampling_follows_the_distribution():
    """Within the top-3 (renormalised 0.4/0.8, 0.25/0.8, 0.15/0.8), frequencies match to 3%."""
    logits, order = _known_logits(20000)
    counts = torch.bincount(_draw(logits, Sampling(temperature=1.0, top_k=3)), minlength=32).double() / 20000
    for i, p in enumerate([0.5, 0.3125, 0.1875]):
        assert abs(counts[order[i]].item() - p) < 0.03


def test_low_temperature_sampling_is_greedy():
    logits, order = _known_logits(500)
    assert set(_draw(logits, Sampling(temperature=1e-3)).tolist()) == {order[0]}


# ---- the cache: rollback and the static-shape step ---------------------------------------------------------


def test_rollback_then_redecode_gives_the_same_tokens(model):
    """Generate N, lower the lengths by m (different per sequence, as speculative decoding does), re-decode."""
    ids, n, back = _prompts(model.cfg.vocab_size, seed=4), 10, torch.tensor([2, 4])
    ref = Generator(model, B, S + n + 8).generate(ids, n + 4)          # [B, n+4]: the tokens to reproduce
    gen = Generator(model, B, S + n + 8)
    first = gen.generate(ids, n)
    assert torch.equal(first, ref[:, :n])
    # cached so far: prompt + first[:, :n-1]; roll each sequence back by `back`
    lengths = gen.cache.lengths.clone()
    assert lengths.tolist() == [S + n - 1] * B
    gen.rollback(lengths - back.to(lengths.dtype))                      # device-side: the host bound stays an upper bound
    nxt = ref[torch.arange(B), n - 1 - back]                            # the token each sequence feeds next
    redo = []
    for _ in range(4):
        nxt = gen.decode(nxt)
        redo.append(nxt)
    redo = torch.stack(redo, dim=1)                                     # [B, 4]
    for b in range(B):
        start = n - int(back[b])
        assert redo[b].tolist() == ref[b, start:start + 4].tolist(), f"sequence {b}"


def test_rollback_overwrites_stale_entries(model):
    """After rolling back, decoding *different* tokens must not see the stale cache entries."""
    ids = _prompts(model.cfg.vocab_size, seed=5)
    gen = Generator(model, B, S + 8)
    with torch.inference_mode():
        gen.prefill(ids)
        gen.decode(torch.tensor([7, 8]))
        gen.decode(torch.tensor([9, 10]))
        gen.cache.rollback(torch.full((B,), S, dtype=torch.int32))
        step = gen.cache.step(1, None)                  # read the whole cache, stale entries included
        after = model(torch.tensor([[11], [12]]), step, gen.cache, select=-1)
    fresh = Generator(model, B, S + 8)
    with torch.inference_mode():
        fresh.prefill(ids)
        want = model(torch.tensor([[11], [12]]), fresh.cache.step(1, S), fresh.cache, select=-1)
    assert rel_err(after, want) <= 1e-6


def test_static_shape_step_equals_sliced_step(model):
    """eager_step(tokens, None) masks the whole cache (what a CUDA graph captures) instead of slicing it."""
    ids, n = _prompts(model.cfg.vocab_size, seed=6), 12
    max_len = S + n + 20                                                 # plenty of never-written padding
    sliced, static = Generator(model, B, max_len), Generator(model, B, max_len)
    a, b = sliced.prefill(ids), static.prefill(ids)
    out_a, out_b = [a], [b]
    with torch.inference_mode():
        for i in range(n):
            a = sliced.eager_step(a, S + i)
            b = static.eager_step(b, None)
            out_a.append(a)
            out_b.append(b)
        assert torch.equal(torch.stack(out_a), torch.stack(out_b))
        # and the logits, not only their argmax
        tok = out_a[-1]
        la = model(tok[:, None], sliced.cache.step(1, S + n), sliced.cache, select=-1)
        lb = model(tok[:, None], static.cache.step(1, None), static.cache, select=-1)
    assert rel_err(lb, la) <= 1e-5


@pytest.mark.parametrize("greedy", [True, False])
def test_step_writing_into_its_own_input_equals_a_fresh_output(model, greedy):
    """eager_step(tok, None, out=tok), what the decode graph captures (its token buffer is its input and its
    output), reads the tokens before it overwrites them: the same tokens, step by step, as a fresh output each
    step, for greedy and for seeded sampling (the sampler's draw is copied in)."""
    ids, n = _prompts(model.cfg.vocab_size, seed=8), 10
    sampling = None if greedy else Sampling(temperature=0.8, top_k=5)
    fresh, inplace = Generator(model, B, S + n + 2, sampling), Generator(model, B, S + n + 2, sampling)
    if not greedy:
        fresh.generator = torch.Generator().manual_seed(5)
        inplace.generator = torch.Generator().manual_seed(5)
    a = fresh.prefill(ids)
    buf = inplace.prefill(ids).clone()
    with torch.inference_mode():
        for _ in range(n):
            a = fresh.eager_step(a, None)
            got = inplace.eager_step(buf, None, out=buf)
            assert got is buf                                         # written into, not replaced
            assert torch.equal(buf, a)


@pytest.mark.parametrize("knob,pdl,order", [("after", True, ["replay", "clone", "mark"]),
                                            ("before", True, ["replay", "mark", "clone"]),
                                            ("", True, ["replay", "clone"]),
                                            ("after", False, ["replay", "clone"])])
def test_prefill_graph_run_places_the_pdl_mark(monkeypatch, knob, pdl, order):
    """PrefillGraph.run's host-side order (no GPU: a stand-in graph and output): with PDL on the empty PDL kernel
    goes after the output's copy (graphs.PDL_MARK "after", the default; the GPU measured "before" no good), never
    without PDL; a bad knob is refused."""
    import minimoe.graphs as graphs
    seen = []

    class Out:
        def clone(self):
            seen.append("clone")
            return "tokens"

    class Graph:
        def replay(self):
            seen.append("replay")

    pg = object.__new__(graphs.PrefillGraph)
    pg.ids, pg.n_valid = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, dtype=torch.int32)
    pg.graph, pg.out, pg.pdl = Graph(), Out(), pdl
    monkeypatch.setattr(graphs, "_pdl_mark", lambda: seen.append("mark"))
    monkeypatch.setattr(graphs, "PDL_MARK", knob)
    assert pg.run(torch.ones(1, 4, dtype=torch.long), torch.full((1,), 4, dtype=torch.int32)) == "tokens"
    assert seen == order
    assert pg.ids.sum() == 4 and pg.n_valid.item() == 4
    monkeypatch.setattr(graphs, "PDL_MARK", "later")
    with pytest.raises(ValueError, match="PDL_MARK"):
        pg.run(pg.ids, pg.n_valid)


@pytest.mark.parametrize("knob,pdl,marks", [("after", True, 1), ("before", True, 1), ("", True, 0), ("after", False, 0)])
def test_decode_graph_record_copies_then_marks(monkeypatch, knob, pdl, marks):
    """DecodeGraph.record (no GPU: a stand-in graph): the step's tokens land in the given column, then, with PDL on and
    graphs.PDL_MARK set, one empty PDL kernel; a bad knob is refused."""
    import minimoe.graphs as graphs
    seen = []
    dg = object.__new__(graphs.DecodeGraph)
    dg.tokens, dg.pdl = torch.tensor([4, 7, 9]), pdl
    monkeypatch.setattr(graphs, "_pdl_mark", lambda: seen.append("mark"))
    monkeypatch.setattr(graphs, "PDL_MARK", knob)
    buf = torch.zeros(3, 5, dtype=torch.long)
    dg.record(buf[:, 2])
    assert buf[:, 2].tolist() == [4, 7, 9] and int(buf.sum()) == 20 and seen == ["mark"] * marks
    monkeypatch.setattr(graphs, "PDL_MARK", "later")
    with pytest.raises(ValueError, match="PDL_MARK"):
        dg.record(buf[:, 3])


def test_generate_records_each_graphed_step_through_the_decode_graph(model, monkeypatch):
    """With a decode graph, generate() feeds the graph's own token buffer back (own=False) and keeps each step's
    tokens through DecodeGraph.record (a stand-in graph that runs the eager static step): the free tokens unchanged."""
    import minimoe.graphs as graphs
    ids, n = _prompts(model.cfg.vocab_size, seed=6), 7
    want = Generator(model, B, S + n + 1).generate(ids, n)
    gen = Generator(model, B, S + n + 1)
    dg = object.__new__(graphs.DecodeGraph)
    dg.tokens, dg.pdl = torch.zeros(B, dtype=torch.long), False
    records, owns = [], []

    class Graph:
        def replay(self):
            gen.eager_step(dg.tokens, None, out=dg.tokens)

    dg.graph = Graph()
    real_record, real_step = dg.record, dg.step
    dg.record = lambda dst: records.append(1) or real_record(dst)
    dg.step = lambda tokens, own=True: owns.append(own) or real_step(tokens, own=own)
    gen.graphs = dg
    assert torch.equal(gen.generate(ids, n), want)
    assert len(records) == n - 1 and owns == [False] * (n - 1)


# ---- greedy on the LM head's own dtype --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_greedy_raw_logits_give_the_same_tokens_and_counts(monkeypatch, dtype):
    """GREEDY_RAW_LOGITS: the sampler sees the head's bf16 / fp16 logits, not a float32 copy; the tokens and the
    non-finite count are those of the copy (the cast is exact), and a sampled (non-greedy) run still gets float32."""
    import minimoe.generate as gen_mod
    net, _, _ = build_model("olmoe-tiny", "dummy", dtype=dtype, seed=5)
    ids, n = _prompts(net.cfg.vocab_size, seed=4), 6
    seen = []
    real = Generator._sample

    def spy(self, logits, out=None):
        seen.append(logits.dtype)
        return real(self, logits, out)

    monkeypatch.setattr(Generator, "_sample", spy)
    runs = {}
    for raw in (False, True):
        monkeypatch.setattr(gen_mod, "GREEDY_RAW_LOGITS", raw)
        seen.clear()
        g = Generator(net, B, S + n + 1)
        runs[raw] = (g.generate(ids, n), int(g.nonfinite), set(seen))
    assert torch.equal(runs[True][0], runs[False][0])
    assert runs[True][1] == runs[False][1]
    assert runs[False][2] == {torch.float32} and runs[True][2] == {dtype}
    seen.clear()
    g = Generator(net, B, S + n + 1, sampling=Sampling(temperature=1.0))
    g.generate(ids, 2)
    assert seen and set(seen) == {torch.float32}, "sampling keeps float32 logits"
