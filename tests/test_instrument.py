"""Guards minimoe.instrument: regions are free when off, flat and correctly counted when on; expert-load counts.

Call counts are derived from each tiny card's config (layers, MoE layers, shared experts), so a region that
goes missing, is opened twice, or nests inside another shows up here before it skews a `--profile` table.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from minimoe import instrument
from minimoe.settings import RunSettings
from minimoe.generate import Generator
from minimoe.instrument import REGIONS, ExpertLoad, Profiler, profiling, region
from minimoe.loader import build_model

TINY_CARDS = ("olmoe-tiny", "mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "deepseek-moe-tiny",
              "deepseek-v2-lite-tiny", "deepseek-v3-tiny")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
B, S = 2, 5                       # prompt batch and length used throughout: T = 10 prefill tokens


def tiny(card: str, experts: str = "loop"):
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device="cpu",
                                settings=RunSettings(experts=experts), seed=0)
    return model, cfg


def prompts(cfg, batch=B, seq=S):
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))


def expected_calls(cfg, experts: str = "loop") -> dict:
    """Region -> calls for one forward plus its sampled token, read off the architecture."""
    L = cfg.n_layers
    moe = sum(cfg.is_moe_layer(i) for i in range(L))
    shared = moe if cfg.shared_intermediate_size else 0
    calls = {"embed": 1, "attention": L, "norm": 2 * L + 1, "router": moe, "experts": moe, "dense": L - moe,
             "shared": shared, "lm_head": 1, "sample": 1}
    if experts == "grouped":      # the grouped path adds its own permute and unpermute around the GEMMs
        calls["permute"] = moe
        calls["unpermute"] = moe
    return {k: v for k, v in calls.items() if v}


@pytest.fixture(autouse=True)
def no_profiler_left_on():
    """Every test starts and ends with instrumentation off (a leak would make later tests lie)."""
    assert instrument._active is None and instrument._load is None
    yield
    assert instrument._active is None and instrument._load is None


# ---- off: free -----------------------------------------------------------------------------------


def test_disabled_region_is_one_shared_noop():
    got = {id(region(name)) for name in REGIONS for _ in range(3)}
    assert got == {id(instrument._NULL)}
    with region("experts") as ctx:           # the no-op context really is usable and yields nothing
        assert ctx is None


def test_disabled_profiler_records_nothing_during_generation(monkeypatch):
    model, cfg = tiny("deepseek-moe-tiny")   # dense + MoE + shared layers: every region name in play
    fresh, load = Profiler("cpu"), ExpertLoad(cfg.n_layers, cfg.n_experts, "cpu")

    def no_timing(*a, **k):
        raise AssertionError("a timed region was created with no profiler active")
    monkeypatch.setattr(instrument, "_Timed", no_timing)
    gen = Generator(model, B, 16)
    tok = gen.prefill(prompts(cfg))
    gen.decode(tok)
    assert fresh.totals() == {}
    assert not fresh.ms and not fresh.calls and not fresh.notes
    assert int(load.counts.sum()) == 0


def test_note_only_lands_in_an_active_profiler():
    instrument.note("fused_moe", "ignored")
    p = Profiler("cpu")
    assert p.notes == {}
    with profiling(p):
        instrument.note("fused_moe", "small-batch")
    instrument.note("fused_moe", "after")
    assert p.notes == {"fused_moe": "small-batch"}


# ---- on: what gets recorded ----------------------------------------------------------------------


@pytest.mark.parametrize("card", TINY_CARDS)
def test_prefill_records_each_region_once_per_use(card):
    model, cfg = tiny(card)
    gen = Generator(model, B, 16)
    p = Profiler("cpu")
    with profiling(p):
        gen.prefill(prompts(cfg))
    totals = p.totals()
    assert {n: v["calls"] for n, v in totals.items()} == expected_calls(cfg)
    assert all(v["ms"] > 0 for v in totals.values())
    assert sum(v["pct"] for v in totals.values()) == pytest.approx(100.0)


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-moe-tiny"])
def test_decode_steps_accumulate_calls_per_step(card):
    model, cfg = tiny(card)
    gen = Generator(model, B, 16)
    tok = gen.prefill(prompts(cfg))
    p = Profiler("cpu")
    with profiling(p):
        for _ in range(3):
            tok = gen.decode(tok)
    assert {n: v["calls"] for n, v in p.totals().items()} == {n: 3 * c for n, c in expected_calls(cfg).items()}
    p.reset()
    assert p.totals() == {}


@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-moe-tiny"])
def test_grouped_path_regions(card):
    model, cfg = tiny(card, experts="grouped")
    p = Profiler("cpu")
    with profiling(p):
        Generator(model, B, 16).prefill(prompts(cfg))
    assert {n: v["calls"] for n, v in p.totals().items()} == expected_calls(cfg, "grouped")


class NestingProbe(Profiler):
    """A profiler that also tracks how deep regions are opened (they must be flat)."""

    def __init__(self):
        super().__init__("cpu")
        self.depth = self.max_depth = 0

    def region(self, name):
        timed = super().region(name)

        @contextlib.contextmanager
        def tracked():
            self.depth += 1
            self.max_depth = max(self.max_depth, self.depth)
            try:
                with timed:
                    yield
            finally:
                self.depth -= 1
        return tracked()


@pytest.mark.parametrize("card,experts", [(c, "loop") for c in TINY_CARDS] + [("qwen2-moe-tiny", "grouped")])
def test_regions_never_nest(card, experts):
    """Their sum is reported as the profiled part of a step: a nested region would be counted twice."""
    model, cfg = tiny(card, experts)
    probe = NestingProbe()
    gen = Generator(model, B, 16)
    with profiling(probe):
        gen.decode(gen.prefill(prompts(cfg)))
    assert probe.max_depth == 1


def test_unknown_region_names_raise():
    p = Profiler("cpu")
    with pytest.raises(KeyError, match="unknown region 'expert'"):
        p.region("expert")
    with profiling(p), pytest.raises(KeyError, match="unknown region 'moe'"):
        with region("moe"):
            pass


def test_profiling_restores_the_previous_state_even_on_error():
    outer, inner = Profiler("cpu"), Profiler("cpu")
    load = ExpertLoad(2, 4, "cpu")
    with profiling(outer):
        with pytest.raises(RuntimeError):
            with profiling(inner, load):
                assert instrument._active is inner and instrument._load is load
                raise RuntimeError("boom")
        assert instrument._active is outer and instrument._load is None
        with region("router"):
            pass
    assert outer.calls == {"router": 1} and not inner.calls


# ---- expert load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("card", TINY_CARDS)
def test_expert_load_counts_every_routed_slot(card):
    model, cfg = tiny(card)
    load = ExpertLoad(cfg.n_layers, cfg.n_experts, "cpu")
    gen = Generator(model, B, 16)
    moe = torch.tensor([cfg.is_moe_layer(i) for i in range(cfg.n_layers)])
    with profiling(None, load):
        tok = gen.prefill(prompts(cfg))
        per_layer = load.counts.sum(1)
        assert per_layer[moe].tolist() == [B * S * cfg.top_k] * int(moe.sum())       # T*K per MoE layer
        assert per_layer[~moe].tolist() == [0] * int((~moe).sum())                 # dense layers route nothing
        gen.decode(tok)
    assert load.counts.sum(1)[moe].tolist() == [(B * S + B) * cfg.top_k] * int(moe.sum())
    assert load.counts.dtype == torch.int64 and int(load.counts.min()) >= 0


def test_expert_load_record_and_summary_by_hand(tmp_path):
    load = ExpertLoad(3, 4, "cpu")
    load.record(0, torch.tensor([[0, 1], [0, 2]]))                 # [T=2, K=2]
    load.record(0, torch.tensor([[0, 3]]))
    load.record(1, torch.tensor([[0, 1], [2, 3]]))
    load.record(2, torch.tensor([[1, 0], [1, 0], [2, 2]]))
    assert load.counts.tolist() == [[3, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 0]]
    s = load.summary()
    assert s["tokens_per_expert"] == load.counts.tolist()
    # max / mean per layer: 3/1.5, 1/1, 2/1.5
    assert s["imbalance_per_layer"] == pytest.approx([2.0, 1.0, 4 / 3])
    assert s["imbalance_max"] == pytest.approx(2.0)
    assert s["imbalance_mean"] == pytest.approx((2.0 + 1.0 + 4 / 3) / 3)

    path = tmp_path / "load.png"
    load.heatmap(str(path))
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_expert_load_imbalance_counts_each_layer_over_its_own_experts(tmp_path):
    """Layers of a globally pruned model hold different expert counts: a layer of 2 experts whose tokens split
    evenly is balanced (1.0), not 2.0 as its mean over the widest layer's 4 columns said."""
    load = ExpertLoad(2, 4, "cpu", experts_per_layer=[4, 2])
    load.record(0, torch.tensor([[0, 1], [2, 3]]))                 # 1 each of 4: balanced
    load.record(1, torch.tensor([[0, 1], [1, 0]]))                 # 2 each of its 2: balanced
    s = load.summary()
    assert s["imbalance_per_layer"] == pytest.approx([1.0, 1.0])
    load.record(1, torch.tensor([[0, 1]]))                         # 3 and 3 of 2 experts
    load.record(1, torch.tensor([[0, 0]]))                         # 5 and 3: max 5 over mean 4
    assert load.summary()["imbalance_per_layer"] == pytest.approx([1.0, 1.25])
    load.heatmap(str(tmp_path / "uneven.png"))                     # the missing experts drawn blank, no error
    assert (tmp_path / "uneven.png").read_bytes()[:8] == PNG_MAGIC


def test_expert_load_of_a_globally_pruned_model_uses_its_layers_counts():
    import dataclasses
    from minimoe.loader import read_config
    base = read_config("qwen2-moe-tiny")[0]
    assert base.n_layers == 3
    cfg = dataclasses.replace(base, experts_per_layer=(5, 3, 5))
    load = ExpertLoad.of(cfg, "cpu")
    assert load.counts.shape == (cfg.n_layers, 5) and load.experts == [5, 3, 5]


def test_expert_load_mask_counts_only_the_tokens_it_keeps():
    load = ExpertLoad(1, 4, "cpu")
    ids = torch.tensor([[0, 1], [2, -1], [3, 0]])                    # [T 3, K 2]; -1: a skipped slot
    load.mask = torch.tensor([True, False, True])
    load.record(0, ids)
    assert load.counts[0].tolist() == [2, 1, 0, 1]                   # token 1 (expert 2) not counted
    load.mask = torch.tensor([True, False])
    with pytest.raises(ValueError, match="2 tokens, the router saw 3"):
        load.record(0, ids)
    load.mask = None
    load.record(0, ids)
    assert load.counts[0].tolist() == [4, 2, 1, 2]
