"""Guards pruning and skipping: pruned = masked routing, narrowed = zeroed neurons, checkpoints reload, stats, CLIs."""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import COMMON, TINY_HF, randomize, rel_err
from minimoe import ops, settings as run_settings
from minimoe.__main__ import main
from minimoe.calibrate import Calibration, calibrate, moe_layers
from minimoe.config import ModelConfig
from minimoe.experts import EXPERT_PATHS, Experts
from minimoe.gate import Router, SkipCount, counting_skips, skip_small
from minimoe.generate import Generator
from minimoe.hf_save import COUNT_KEYS, WIDTH_KEYS, save_checkpoint
from minimoe.loader import build_model, resolve
from minimoe.prune import NEURON_SCORES, choose_experts, drop_experts_, kept_width, n_dropped, narrow_, prune_, \
    pruned_config, skip_threshold_for
from minimoe.router import route

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[1]
# DeepSeek with 16 experts in 4 groups, so that a quarter can go (one per group) and K=3 still fits
GROUPED = {"n_routed_experts": 16}
ALL = ("olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")
TOKENS = torch.randint(0, COMMON["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(5))
TOL_ROUTING = 1e-6      # the router scores in float32 by design (router.py); everything else here is float64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """family -> a tiny transformers checkpoint folder (DeepSeek with 16 grouped experts)."""
    made = {}

    def get(family):
        if family not in made:
            config_cls, model_cls, kwargs = TINY_HF[family]
            extra = GROUPED if family.startswith("deepseek") else {}
            config = getattr(transformers, config_cls)(**COMMON, **{**kwargs, **extra})
            torch.manual_seed(0)
            hf = getattr(transformers, model_cls)(config).float().eval()
            randomize(hf, ALL.index(family))
            folder = tmp_path_factory.mktemp(f"ckpt-{family}")
            hf.save_pretrained(folder)
            made[family] = folder
        return made[family]
    return get


def masked_reference(model, keep: dict):
    """A float64 copy of the unpruned model whose routers see -inf logits (and, for DeepSeek-V3, a -inf
    selection bias) for every expert not in keep[layer]: what pruning must equal."""
    ref = copy.deepcopy(model)
    for layer, moe in moe_layers(ref):
        gone = torch.ones(moe.router.n_experts, dtype=torch.bool)
        gone[keep[layer]] = False

        def hook(router, args, out, gone=gone):
            logits = F.linear(args[0].to(router.weight.dtype), router.weight).masked_fill(gone, float("-inf"))
            bias = None if router.bias is None else router.bias.masked_fill(gone, float("-inf"))
            return route(logits, router.spec(), bias)
        moe.router.register_forward_hook(hook)
    return ref


def routing(model, tokens):
    """Logits [B, S, V] and each MoE layer's (weights, ids) for one prefill of `tokens`."""
    seen = {}
    hooks = [moe.router.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i, moe in moe_layers(model)]
    logits = Generator(model, *tokens.shape).append(tokens)
    for h in hooks:
        h.remove()
    return logits, seen


def greedy(model, n=6):
    return Generator(model, 2, TOKENS.shape[1] + n).generate(TOKENS, n)


# ---- inter-expert: masking, checkpoints, transformers --------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_inter_pruning_is_masked_routing_and_saves_a_checkpoint(family, checkpoint, tmp_path):
    folder = checkpoint(family)
    model, cfg, _ = build_model(str(folder), "auto", dtype=torch.float64)
    calib = calibrate(model, torch.randint(0, cfg.vocab_size, (96,), generator=torch.Generator().manual_seed(1)),
                      window=32, batch=2)
    unpruned = copy.deepcopy(model)
    res = prune_(model, calib, "inter", "reap", 0.25)
    keep = {l: torch.tensor(v) for l, v in res["kept"].items()}
    assert all(len(v) == cfg.n_experts - n_dropped(0.25, cfg.n_experts) for v in keep.values())
    ours, our_routes = routing(model, TOKENS)
    ref, ref_routes = routing(masked_reference(unpruned, keep), TOKENS)
    for layer, (w, ids) in ref_routes.items():
        assert torch.equal(keep[layer][our_routes[layer][1]], ids), f"layer {layer} chose other experts"
        assert rel_err(our_routes[layer][0], w) <= TOL_ROUTING
    assert rel_err(ours, ref) <= TOL_ROUTING
    assert rel_err(ours, routing(unpruned, TOKENS)[0]) > 1e-3            # the dropped experts mattered

    out = save_checkpoint(model, res["cfg"], resolve(str(folder))[0], tmp_path / "pruned", folder)
    config = json.loads((out / "config.json").read_text())
    counts = [config[k] for k in COUNT_KEYS[family] if k in config]         # the key(s) the source config used
    assert counts and set(counts) == {len(keep[next(iter(keep))])} and "num_experts_per_layer" not in config
    again, _, _ = build_model(str(out), "auto", dtype=torch.float32)
    model32 = model.float()
    assert torch.equal(greedy(again), greedy(model32))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    with torch.no_grad():
        hf_logits = hf(TOKENS).logits
        hf_tokens = hf.generate(TOKENS, max_new_tokens=6, do_sample=False)[:, TOKENS.shape[1]:]
    assert rel_err(Generator(again, 2, 12).append(TOKENS), hf_logits) <= 1e-5
    assert torch.equal(hf_tokens, greedy(again))


def test_global_ranking_gives_uneven_layers_minimoe_loads_and_transformers_refuses(checkpoint, tmp_path):
    folder = checkpoint("olmoe")                        # 7 experts, K=3, 3 layers
    model, cfg, _ = build_model(str(folder), "auto", dtype=torch.float64)
    unpruned = copy.deepcopy(model)
    scores = {0: torch.tensor([9., 8, 7, 6, 5, 4, 3]), 1: torch.tensor([1., 1, 1, 1, 1, 1, 1]),
              2: torch.tensor([1., 2, 3, 4, 50, 60, 70])}
    keep = choose_experts(cfg, scores, 0.25, "global", 3)   # 5 of 21 go: ranked by score / the layer's mean
    assert keep[2].tolist() == [4, 5, 6] and keep[0].tolist() == [0, 1, 2, 3, 4, 5] and len(keep[1]) == 7
    drop_experts_(model, keep)
    new = pruned_config(cfg, model)
    model.cfg = new
    assert rel_err(routing(model, TOKENS)[0], routing(masked_reference(unpruned, keep), TOKENS)[0]) <= TOL_ROUTING
    out = save_checkpoint(model, new, resolve(str(folder))[0], tmp_path / "uneven", folder)
    config = json.loads((out / "config.json").read_text())
    assert config["num_experts_per_layer"] == [len(keep[i]) for i in range(3)]
    assert config["num_experts"] == max(config["num_experts_per_layer"])
    again, again_cfg, _ = build_model(str(out), "auto", dtype=torch.float64)
    assert again_cfg.experts_per_layer == tuple(config["num_experts_per_layer"])
    assert torch.equal(Generator(again, 2, 12).append(TOKENS), Generator(model, 2, 12).append(TOKENS))
    from minimoe.families import config_from_hf
    read = config_from_hf(config)                      # before any tensor is read: the checks made up front
    assert read.experts_per_layer == tuple(config["num_experts_per_layer"])
    fewest = min(config["num_experts_per_layer"])      # 3: --topk past it would index out of the small layer
    assert read.with_top_k(fewest).top_k == fewest
    with pytest.raises(ValueError, match=f"--topk {fewest + 1} must be between 1 and the expert count {fewest}"):
        read.with_top_k(fewest + 1)
    with pytest.raises(ValueError, match=f"expert count {fewest}"):
        build_model(str(out), "auto", dtype=torch.float64, top_k=fewest + 1)
    for bad in ([7, 7], [7, 0, 7], [7, 7, "7"]):
        with pytest.raises(ValueError, match="num_experts_per_layer must list 3 counts"):
            config_from_hf({**config, "num_experts_per_layer": bad})
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize("card", ["olmoe-tiny", "mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "deepseek-moe-tiny",
                                  "deepseek-v2-lite-tiny", "deepseek-v3-tiny"])
def test_saved_config_keys_are_the_ones_each_family_reads(card):
    import dataclasses
    from minimoe.cards import load_card
    from minimoe.families import config_from_hf
    from minimoe.hf_save import hf_config
    cfg = config_from_hf(load_card(card))
    fewer = cfg.n_experts - max(cfg.n_group, 1)
    new = dataclasses.replace(cfg, n_experts=fewer, moe_intermediate_size=cfg.moe_intermediate_size - 8)
    back = config_from_hf(hf_config(load_card(card), new))
    assert back.n_experts == fewer
    tied = cfg.family.startswith("deepseek") and cfg.shared_intermediate_size
    assert back.moe_intermediate_size == cfg.moe_intermediate_size - (0 if tied else 8)
    assert back.shared_intermediate_size == cfg.shared_intermediate_size


@pytest.mark.parametrize("family, ratio, per_layer, message", [
    ("deepseek_v2", 0.25, "uniform", r"same number from each of its 4 groups.*ratios that work here: 0.25"),
    ("deepseek_v3", 0.75, "uniform", "at least 2 left per group"),
    ("deepseek_v3", 0.25, "global", "--per-layer global cannot keep group-limited routing"),
    ("mixtral", 0.75, "uniform", "at least K=2 left"),
    ("olmoe", 0.05, "uniform", "drops 0"),
])
def test_ratios_the_routing_cannot_take_are_refused(family, ratio, per_layer, message, checkpoint):
    cfg = build_model(str(checkpoint(family)), "auto", dtype=torch.float32)[1]
    counts = {i: torch.rand(cfg.n_experts) for i in range(cfg.n_layers) if cfg.is_moe_layer(i)}
    if family == "deepseek_v2":        # 16 experts in 4 groups: a quarter is one per group, fine; 3/16 is not
        ratio = 3 / 16
    with pytest.raises(ValueError, match=message):
        choose_experts(cfg, counts, ratio, per_layer, cfg.top_k)


def test_group_limited_pruning_drops_the_same_number_from_every_group(checkpoint):
    cfg = build_model(str(checkpoint("deepseek_v3")), "auto", dtype=torch.float32)[1]
    scores = {1: torch.arange(16.0).flip(0)}            # group g holds 4g..4g+3; the last of each is the weakest
    keep = choose_experts(cfg, scores, 0.25, "uniform", cfg.top_k)[1]
    assert keep.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]


# ---- intra-expert --------------------------------------------------------------------------------------

def test_kept_widths_are_multiples_of_8_when_the_width_is():
    assert [kept_width(r, 1024) for r in (0.125, 0.25, 0.5)] == [896, 768, 512]
    assert [kept_width(r, 224) for r in (0.125, 0.25, 0.5)] == [200, 168, 112]
    assert kept_width(0.125, 60) == 52                       # not a multiple of 8: exact
    with pytest.raises(ValueError, match="keeps 32 neurons"):
        kept_width(0.05, 32)


def _zero_neurons(experts: Experts, keep: torch.Tensor) -> None:
    """Zero every neuron not in keep [E, I']: its gate and up rows and its down-projection column."""
    I = experts.hidden
    gone = torch.ones(experts.n_local, I, dtype=torch.bool)
    gone.scatter_(1, keep, False)
    with torch.no_grad():
        experts.w13[:, :I][gone] = 0
        experts.w13[:, I:][gone] = 0
        experts.w2.transpose(1, 2)[gone] = 0


@pytest.mark.parametrize("family", ["qwen2_moe", "deepseek_v3"])
def test_width_pruned_model_equals_zeroed_neurons(family, checkpoint, tmp_path):
    folder = checkpoint(family)
    model, cfg, _ = build_model(str(folder), "auto", dtype=torch.float64)
    calib = calibrate(model, torch.randint(0, cfg.vocab_size, (64,), generator=torch.Generator().manual_seed(2)))
    zeroed = copy.deepcopy(model)
    res = prune_(model, calib, "intra", "width", 0.25)
    assert res["cfg"].moe_intermediate_size == 24 and set(res["kept"].values()) == {24}
    for (layer, moe), (_, ref) in zip(moe_layers(model), moe_layers(zeroed)):
        w2 = ref.experts.w2
        # kept neurons: those whose (unpruned) down column appears in the pruned w2, in order
        keep = torch.stack([torch.tensor([next(j for j in range(w2.shape[2]) if torch.equal(w2[e, :, j], col))
                                          for col in moe.experts.w2[e].T]) for e in range(w2.shape[0])])
        _zero_neurons(ref.experts, keep)
    assert rel_err(Generator(model, 2, 12).append(TOKENS), Generator(zeroed, 2, 12).append(TOKENS)) <= 1e-12
    out = save_checkpoint(model, res["cfg"], resolve(str(folder))[0], tmp_path / "narrow", folder)
    config = json.loads((out / "config.json").read_text())
    again = build_model(str(out), "auto", dtype=torch.float64)[0]
    assert torch.equal(Generator(again, 2, 12).append(TOKENS), Generator(model, 2, 12).append(TOKENS))
    if family == "deepseek_v3":       # its shared experts' width is tied to moe_intermediate_size, which stays
        assert config[WIDTH_KEYS[family]] == 32 and config["moe_intermediate_size_per_layer"] == [0, 24, 24]
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            transformers.AutoModelForCausalLM.from_pretrained(out)
        return
    assert config[WIDTH_KEYS[family]] == 24 and "moe_intermediate_size_per_layer" not in config
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    with torch.no_grad():
        assert rel_err(Generator(again.float(), 2, 12).append(TOKENS), hf(TOKENS).logits) <= 1e-5


@pytest.mark.parametrize("path", ["loop", "grouped", "fused"])
def test_narrowed_experts_equal_zeroed_neurons_on_every_path(path):
    g = torch.Generator().manual_seed(3)
    E, I, D, T, K = 6, 48, 32, 9, 2
    w13, w2 = torch.randn(E, 2 * I, D, generator=g) / D ** 0.5, torch.randn(E, D, I, generator=g) / I ** 0.5
    x = torch.randn(T, D, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    weights = torch.rand(T, K, generator=g)
    zeroed = Experts.from_tensors(w13.clone(), w2.clone())
    keep = NEURON_SCORES["random"](None, w13, w2, g).argsort(1)[:, 16:].sort(1).values    # 32 of 48 per expert
    _zero_neurons(zeroed, keep)

    narrow = Experts.from_tensors(w13.clone(), w2.clone())
    narrow_(narrow, keep)
    assert narrow.w13.shape == (E, 64, D) and narrow.w2.shape == (E, D, 32)
    want = EXPERT_PATHS["loop"](x.double(), Experts.from_tensors(zeroed.w13.double(), zeroed.w2.double()), ids, weights)
    got = EXPERT_PATHS[path](x, narrow, ids, weights)
    assert rel_err(got, want) <= 1e-5


# ---- calibration ---------------------------------------------------------------------------------------

def test_calibration_statistics_are_what_the_experts_computed(checkpoint, tmp_path):
    model, cfg, _ = build_model(str(checkpoint("olmoe")), "auto", dtype=torch.float64)
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(4))
    seen = []
    hooks = [moe.experts.register_forward_hook(lambda m, a, o, i=i: seen.append((i, m, a)))
             for i, moe in moe_layers(model)]
    calib = calibrate(model, ids, window=16, batch=2)             # windows 16, 16 and a tail of 8
    for h in hooks:
        h.remove()
    assert calib.tokens == 40 and len(seen) == 2 * cfg.n_layers  # one forward of 2 windows, one of the tail
    want = {i: {k: torch.zeros(shape, dtype=torch.float64) for k, shape in
                (("count", 7), ("gate", 7), ("reap", 7), ("act", (7, 32)))} for i in range(cfg.n_layers)}
    for layer, ex, (x, w, e) in seen:                             # token by token, slot by slot
        for t, k in torch.cartesian_prod(torch.arange(x.shape[0]), torch.arange(e.shape[1])).tolist():
            with torch.no_grad():
                w13, w2 = ex.expert_weights(int(e[t, k]))
                gate, up = (w13 @ x[t]).split(32)
                a = F.silu(gate) * up
                st, j = want[layer], e[t, k]
                st["count"][j] += 1
                st["gate"][j] += w[t, k]
                st["reap"][j] += w[t, k] * (w2 @ a).norm()
                st["act"][j] += (w[t, k] * a) ** 2
    for layer, st in want.items():
        assert calib.layers[layer]["count"].sum() == 40 * cfg.top_k
        assert calib.layers[layer]["ratio_hist"].sum() == 40 * cfg.top_k
        for k, v in st.items():
            assert torch.allclose(calib.layers[layer][k].double(), v.double(), rtol=1e-6), (layer, k)
    calib.save(tmp_path / "stats.safetensors")
    back = Calibration.load(tmp_path / "stats.safetensors")
    assert back.tokens == 40 and all(torch.equal(back.layers[l][k], calib.layers[l][k].cpu())
                                     for l in calib.layers for k in calib.layers[l])
    other = build_model(str(checkpoint("mixtral")), "auto", dtype=torch.float32)[0]
    with pytest.raises(ValueError, match="the calibration file describes MoE layers"):
        back.check_matches(other)


def test_decode_calibration_observes_only_the_decode_steps(checkpoint):
    """calibrate_decode: the prompts' prefill is not observed, each of the `steps` greedy decode steps is (B tokens a
    step), and the routing histograms equal a hand-hooked eager decode's."""
    from minimoe.calibrate import calibrate_decode
    from minimoe.generate import Generator
    model, cfg, _ = build_model(str(checkpoint("olmoe")), "auto", dtype=torch.float64)
    prompts = torch.randint(0, cfg.vocab_size, (3, 6), generator=torch.Generator().manual_seed(8))
    calib = calibrate_decode(model, prompts, 5)
    assert calib.tokens == 15
    seen = {}
    gen = Generator(model, 3, 12)
    with torch.inference_mode():
        tok = gen.prefill(prompts)
        hooks = [moe.experts.register_forward_hook(
            lambda m, a, o, i=i: seen.setdefault(i, []).append(a[2].clone())) for i, moe in moe_layers(model)]
        for _ in range(5):
            tok = gen.decode(tok)
    for h in hooks:
        h.remove()
    for layer, st in calib.layers.items():
        ids = torch.cat(seen[layer])                               # [15, K]: the decode steps only
        assert int(st["count"].sum()) == 15 * cfg.top_k == int(st["ratio_hist"].sum())
        assert torch.equal(st["count"], torch.bincount(ids.reshape(-1), minlength=st["count"].numel()))
    with pytest.raises(ValueError, match="steps >= 1"):
        calibrate_decode(model, prompts, 0)


def test_methods_rank_differently_and_random_is_seeded(checkpoint):
    model, cfg, _ = build_model(str(checkpoint("qwen3_moe")), "auto", dtype=torch.float32)
    calib = calibrate(model, torch.randint(0, cfg.vocab_size, (128,), generator=torch.Generator().manual_seed(6)))
    kept = {m: prune_(copy.deepcopy(model), calib, "inter", m, 0.5)["kept"] for m in ("frequency", "gate", "reap")}
    assert len({json.dumps(v) for v in kept.values()}) > 1
    freq = calib.layers[0]["count"]
    assert set(kept["frequency"][0]) == set(freq.argsort(stable=True)[4:].tolist())
    a, b = (prune_(copy.deepcopy(model), None, "inter", "random", 0.5, seed=s)["kept"] for s in (1, 1))
    assert a == b != prune_(copy.deepcopy(model), None, "inter", "random", 0.5, seed=2)["kept"]
    with pytest.raises(ValueError, match="needs calibration statistics"):
        prune_(copy.deepcopy(model), None, "inter", "reap", 0.5)


# ---- dynamic skipping ----------------------------------------------------------------------------------

def test_skipping_with_beta_zero_changes_nothing():
    w = torch.tensor([[0.5, 0.3, 0.0], [0.2, 0.2, 0.1]])
    ids = torch.tensor([[3, 1, 0], [2, 5, 4]])
    w0, ids0 = skip_small(w, ids, 0.0)
    assert torch.equal(w0, w) and torch.equal(ids0, ids)
    model = build_model("olmoe-tiny", "dummy", dtype=torch.float32, seed=1)[0]
    plain = Generator(model, 2, 12).append(TOKENS % 512)
    model.settings.skip_threshold = 0.0
    with counting_skips(SkipCount(3, "cpu")) as c:
        assert torch.equal(Generator(model, 2, 12).append(TOKENS % 512), plain)
    assert int(c.slots.sum()) == 0          # beta = 0 never enters the skipping code


@pytest.mark.parametrize("path", ["grouped", "fused"])
@pytest.mark.parametrize("T, E, K", [(1, 8, 2), (33, 8, 3), (2, 60, 4)])   # fused: small, aligned, small
def test_skipping_equals_the_loop_oracle_given_the_same_mask(path, T, E, K):
    g = torch.Generator().manual_seed(T * E + K)
    D, I = 32, 24
    x = torch.randn(T, D, generator=g)
    experts = Experts.from_tensors(torch.randn(E, 2 * I, D, generator=g) / D ** 0.5,
                                   torch.randn(E, D, I, generator=g) / I ** 0.5)
    w, ids = torch.randn(T, E, generator=g).mul(2).softmax(-1).topk(K, dim=-1)
    ws, ids_s = skip_small(w, ids, 0.5)
    assert (ids_s < 0).any() or T == 1
    masked = torch.where(ids_s < 0, 0.0, w)                       # the same mask as zero weights, ids kept
    oracle = EXPERT_PATHS["loop"](x.double(), Experts.from_tensors(experts.w13.double(), experts.w2.double()), ids,
                                  masked.double())
    assert rel_err(EXPERT_PATHS["loop"](x, experts, ids_s, ws), oracle) <= 1e-5
    assert rel_err(EXPERT_PATHS[path](x, experts, ids_s, ws), oracle) <= 1e-5


def test_skipping_in_a_model_fused_equals_loop_and_is_counted():
    s = run_settings.RunSettings(device="cpu", experts="fused", skip_threshold=0.9)
    model = build_model("olmoe-tiny", "dummy", dtype=torch.float32, settings=s, seed=3)[0]
    cfg, tokens = model.cfg, TOKENS[:, :5]
    with counting_skips(SkipCount(cfg.n_layers, "cpu")) as c:
        fused = Generator(model, 2, 5).append(tokens)
    s.experts = "loop"
    loop = Generator(model, 2, 5).append(tokens)
    assert rel_err(fused, loop) <= 1e-5
    assert int(c.slots.sum()) == cfg.n_layers * tokens.numel() * cfg.top_k and 0 < c.fraction() < 1


@pytest.mark.parametrize("path", ["gate_route", "splitk", "route_topk"])
@pytest.mark.parametrize("router", ["softmax_topk", "topk_softmax", "group_limited_greedy"])
def test_router_skips_the_same_with_triton_and_torch_ops(router, path, monkeypatch):
    """The fusable routers skip inside the Triton routing kernel's epilogue (no skip_small after it),
    the generic one after routing: either way Router.forward drops exactly the torch ops' slots, and
    the counter sees them. path: which kernel routes a fusable router (gate GEMV + top-k in one
    program; the split-K GEMV, forced by its size threshold; past the fused sizes, cuBLAS + top-k)."""
    pytest.importorskip("triton")
    if path == "splitk":
        monkeypatch.setattr(ops, "SPLITK_GATE_MIN_BYTES", 0)
        monkeypatch.setattr(ops._norm_route, "MAX_GATE_BYTES", 0)
    E, D, K, T = 60, 64, 4, (70 if path == "route_topk" else 3)
    assert ops.OPS["triton"].gate_route_fits(T, E, D, torch.float32, torch.float32) == (path != "route_topk")
    cfg = ModelConfig("olmoe", 64, D, 1, 2, 2, 32, 64, n_experts=E, top_k=K, moe_intermediate_size=32)
    dev = "cuda" if torch.cuda.is_available() else "cpu"   # the Triton kernels: interpreted on a CPU
    s = run_settings.RunSettings(device=dev, router=router, skip_threshold=0.4)
    g = torch.Generator().manual_seed(T)
    gate = Router(cfg, s, E, layer=0).to(dev)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(E, D, generator=g) * 2 / D ** 0.5)           # logits of std ~2
    h = torch.randn(T, D, generator=g).to(dev)                                   # [T, D]
    calls = []
    monkeypatch.setattr("minimoe.gate.skip_small", lambda *a: calls.append(1) or skip_small(*a))
    out = {}
    for name in ("torch", "triton"):
        s.ops = name
        with counting_skips(SkipCount(1, dev)) as c, torch.no_grad():
            out[name] = gate(h)
        assert int(c.slots[0]) == T * K and 0 < int(c.dropped[0]) < T * (K - 1)
    assert len(calls) == (0 if router != "group_limited_greedy" else 2), "skip_small after a fused router"
    (w, ids), (w_ref, ids_ref) = out["triton"], out["torch"]
    assert torch.equal(ids, ids_ref) and torch.equal(ids < 0, w == 0)
    assert rel_err(w, w_ref) <= 1e-5   # fp32 routing; the gate GEMV's summation order differs


def test_skip_threshold_for_a_fraction_drops_about_that_fraction(checkpoint):
    model, cfg, _ = build_model(str(checkpoint("qwen3_moe")), "auto", dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (256,), generator=torch.Generator().manual_seed(7))
    beta, predicted = skip_threshold_for(calibrate(model, ids, window=64), 1 / 3)
    assert 0 < beta < 1 and abs(predicted - 1 / 3) < 0.05
    model.settings.skip_threshold = beta
    with counting_skips(SkipCount(cfg.n_layers, "cpu")) as c:
        Generator(model, 4, 64).append(ids.view(4, 64))
    assert abs(c.fraction() - predicted) < 0.1        # later layers see the skipped layers' outputs


# ---- command lines ---------------------------------------------------------------------------------------

def run_main(capsys, *argv):
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return (rc, *capsys.readouterr())


@pytest.fixture
def umask_022():
    """A umask that differs from safetensors' own 0600, so a file left at 0600 shows."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_prune_cli_writes_a_checkpoint_and_reuses_statistics(checkpoint, tmp_path, capsys, umask_022):
    folder = checkpoint("mixtral")
    rc, out, err = run_main(capsys, "prune", "--model", folder, "--method", "reap", "--ratio", "0.25",
                            "--calibration", "random:200", "--window", "64", "--save-stats", tmp_path / "s.safetensors",
                            "--out", tmp_path / "a")
    assert rc == 0, err
    assert "5 -> 4" in out and "one token reads" in out and "removed 20.0% of the experts" in out
    assert "whatever E is" in out
    about = json.loads((tmp_path / "a" / "pruning.json").read_text())
    assert about["method"] == "reap" and len(about["kept"]["0"]) == 4
    for f in (tmp_path / "s.safetensors", tmp_path / "a" / "model.safetensors"):   # as open() makes files
        assert f.stat().st_mode & 0o777 == 0o644, f                              # (safetensors alone: 0600)
    rc, out, err = run_main(capsys, "prune", "--model", folder, "--method", "width", "--ratio", "0.5",
                            "--calibration", tmp_path / "s.safetensors", "--out", tmp_path / "b", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["layers"]["0"]["after"] == [5, 16]
    rc, out, err = run_main(capsys, "prune", "--model", folder, "--method", "width", "--ratio", "0.5",
                            "--calibration", tmp_path / "s.safetensors", "--out", tmp_path / "c")
    assert rc == 0 and "removed 50.0% of the width" in out and "every token reads fewer bytes" in out, err
    rc, out, err = run_main(capsys, "generate", "--model", tmp_path / "b", "--prompt-ids", "1,2,3",
                            "--max-new-tokens", 3)
    assert rc == 0, err
    mask = os.umask(0o022)
    try:                                                    # pruned again: the ids stay the original model's
        rc, out, err = run_main(capsys, "prune", "--model", tmp_path / "a", "--method", "random", "--ratio", "0.25",
                                "--out", tmp_path / "aa")
    finally:
        os.umask(mask)
    assert rc == 0, err
    again = json.loads((tmp_path / "aa" / "pruning.json").read_text())
    assert again["previous"]["method"] == "reap" and again["previous"]["kept"] == about["kept"]
    original = build_model(str(folder), "auto", dtype=torch.float32)[0]
    pruned = build_model(str(tmp_path / "aa"), "auto", dtype=torch.float32)[0]
    for layer, ids in again["kept"].items():                   # expert j of the result is original expert ids[j]
        assert len(ids) == 3 and set(ids) <= set(about["kept"][layer]), (ids, about["kept"][layer])
        w13 = original.layers[int(layer)].ffn.experts.stacked()[0]
        assert torch.equal(pruned.layers[int(layer)].ffn.experts.stacked()[0], w13[ids])
    rc, out, err = run_main(capsys, "prune", "--model", tmp_path / "c", "--method", "gate", "--ratio", "0.25",
                            "--calibration", "random:100", "--out", tmp_path / "ca")     # width, then experts
    assert rc == 0, err
    chained = json.loads((tmp_path / "ca" / "pruning.json").read_text())
    assert chained["previous"]["method"] == "width" and "calibration_flag" not in chained
    assert all(len(ids) == 4 and max(ids) < 5 for ids in chained["kept"].values())   # ids of the original five
    assert (tmp_path / "aa" / "model.safetensors").stat().st_mode & 0o777 == 0o644     # the umask's, not 0600


@pytest.mark.parametrize("args, message", [
    (["--method", "magic", "--ratio", "0.25"],
     "--method magic: choose frequency | gate | reap | random (drop experts) or width"),
    (["--method", "reap", "--ratio", "1.5"], "between 0 and 1"),
    (["--method", "width", "--ratio", "0.25", "--per-layer", "global"], "one width in every layer"),
    (["--method", "reap", "--ratio", "0.25"], "needs the checkpoint's tokenizer"),
    (["--method", "reap", "--ratio", "0.25", "--calibration", "random:0"], "positive token count"),
    (["--method", "reap", "--ratio", "0.05", "--calibration", "random"], "drops 0"),
    (["--method", "gate", "--ratio", "0.25", "--calibration", "random", "--skip-threshold", "0.5"],
     "--skip-threshold changes the routing that calibration ranks by"),
    (["--method", "gate", "--ratio", "0.25", "--calibration", "random", "--topk", "1"],
     "--topk changes the routing"),
    (["--method", "gate", "--ratio", "0.25", "--calibration", "/no/such.txt"], "--calibration /no/such.txt: no such file"),
    (["--method", "gate", "--ratio", "0.25", "--ep", "2"], "prune first"),       # not torchrun's advice, then this
    (["--method", "random", "--ratio", "0.25", "--calibration", "random"], "--method random draws what goes from "
     "--seed: it takes no --calibration"),
    (["--method", "random", "--ratio", "0.25", "--save-stats", "s.safetensors"], "writes no --save-stats"),
    (["--method", "gate", "--ratio", "0.25", "--calibration", "random", "--window", "100000"],
     "--window 100000 exceeds max_position_embeddings"),
])
def test_prune_cli_bad_input_is_one_line_and_exit_2(args, message, checkpoint, tmp_path, capsys):
    rc, out, err = run_main(capsys, "prune", "--model", checkpoint("olmoe"), *args, "--out", tmp_path / "x")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_prune_help_leaves_out_the_settings_it_refuses(checkpoint, tmp_path, capsys):
    from minimoe.prune_cli import REFUSED
    rc, shown, _ = run_main(capsys, "prune", "--help")
    assert rc == 0
    assert "--fuse-rope" in shown and "--dtype" in shown                        # the settings calibration uses
    for name in REFUSED:
        flag = run_settings.SETTINGS_FLAGS[name][0]
        assert f"[{flag}" not in shown and not re.search(rf"^  {flag}\b", shown, re.M), name
    rc, _, err = run_main(capsys, "prune", "--model", checkpoint("olmoe"), "--method", "gate", "--ratio", "0.25",
                          "--quant", "int8", "--out", tmp_path / "x")        # hidden, still parsed and refused
    assert rc == 2 and "prune first" in err and not (tmp_path / "x").exists()


def test_prune_cli_refuses_a_used_out_folder_and_a_dense_model(checkpoint, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "f").write_text("x")
    rc, _, err = run_main(capsys, "prune", "--model", checkpoint("olmoe"), "--method", "random", "--ratio", "0.25",
                          "--out", tmp_path / "used")
    assert rc == 2 and "exists and is not an empty directory" in err
    rc, _, err = run_main(capsys, "prune", "--model", checkpoint("olmoe"), "--method", "random", "--ratio", "0.25",
                          "--out", tmp_path / "no" / "such" / "out")
    assert rc == 2 and f"the folder {tmp_path / 'no' / 'such'} does not exist" in err and not (tmp_path / "no").exists()
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_main(capsys, "prune", "--model", checkpoint("olmoe"), "--method", "random", "--ratio", "0.25",
                          "--out", tmp_path / "afile" / "out")
    assert rc == 2 and f"{tmp_path / 'afile'} is a file" in err
    rc, _, err = run_main(capsys, "prune", "--model", "qwen3-0.6b", "--method", "random", "--ratio", "0.25",
                          "--out", tmp_path / "d")
    assert rc == 2 and "needs an MoE model" in err


@pytest.fixture(scope="module")
def stdlib_olmoe(tmp_path_factory):
    """A tiny OLMoE with the shipped tokenizer's 4096-token vocabulary (random weights), for `eval`."""
    config_cls, model_cls, kwargs = TINY_HF["olmoe"]
    config = getattr(transformers, config_cls)(**{**COMMON, "vocab_size": 4096, "num_hidden_layers": 2}, **kwargs)
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(config).float().eval()
    randomize(hf, 9)
    folder = tmp_path_factory.mktemp("stdlib-olmoe")
    hf.save_pretrained(folder)
    for f in (REPO / "models" / "stdlib-tokenizer").iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_eval_prune_reports_the_pruned_model(stdlib_olmoe, capsys):
    common = ["eval", "--model", stdlib_olmoe, "--max-bytes", "1500", "--window", "64", "--stride", "32", "--json", "-"]
    rc, out, err = run_main(capsys, *common)
    assert rc == 0, err
    plain = json.loads(out)
    rc, out, err = run_main(capsys, *common, "--prune", "inter:0.5", "--prune-method", "frequency")
    assert rc == 0, err
    pruned = json.loads(out)
    assert "pruned inter 50.0% by frequency" in pruned["prune"] and "evaluated text itself" in pruned["prune"]
    assert pruned["bpb"] != plain["bpb"] and pruned["tokens_scored"] == plain["tokens_scored"]
    rc, _, err = run_main(capsys, *common, "--prune", "sideways:0.5")
    assert rc == 2 and "choose inter or intra" in err
    rc, _, err = run_main(capsys, *common, "--prune-method", "reap")
    assert rc == 2 and "need --prune" in err
    rc, _, err = run_main(capsys, *common, "--prune", "inter:0.5", "--prune-calibration", "/no/such.txt")
    assert rc == 2 and "--prune-calibration /no/such.txt: no such file" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_main(capsys, *common, "--prune", "inter:0.5", "--prune-method", "random",
                          "--prune-calibration", "random:64")
    assert rc == 2 and "it takes no --prune-calibration" in err
    rc, _, err = run_main(capsys, *common, "--prune", "intra:0.25", "--prune-per-layer", "global")
    assert rc == 2 and "use --prune-per-layer uniform" in err                 # eval's flag, not prune's
    rc, _, err = run_main(capsys, *common, "--prune", "intra:25%", "--prune-method", "random")
    assert rc == 0 and "pruned intra 25.0% by random (no calibration)" in json.loads(_)["prune"], err
    rc, _, err = run_main(capsys, *common, "--prune", "inter:0.5", "--prune-calibration", "random:abc")
    assert rc == 2 and "--prune-calibration random:N needs a positive token count" in err, err   # eval's flag
    rc, _, err = run_main(capsys, *common, "--prune", "inter:0.5", "--prune-calibration", "/no/such.txt")
    assert rc == 2 and "or give heldout, random[:N]" in err, err
    rc, _, err = run_main(capsys, *common, "--prune", "inter:0.5", "--prune-calibration", str(stdlib_olmoe))
    assert rc == 2 and "a folder, not a file" in err, err


def test_eval_header_names_routing_that_is_not_the_cards(stdlib_olmoe, capsys):
    """A score under --topk / --skip-threshold / --router read like the model's own: eval's header said only the
    dtype and --quant. Now it names them, and the share of routed slots skipping dropped (in the JSON too)."""
    common = ["eval", "--model", stdlib_olmoe, "--max-bytes", "800", "--window", "64", "--stride", "32"]
    rc, out, err = run_main(capsys, *common, "--json", "-")
    assert rc == 0, err
    plain = json.loads(out)
    assert plain["routing"] is None and plain["skipped_slots"] is None
    rc, out, err = run_main(capsys, *common, "--json", "-", "--skip-threshold", "0.9", "--topk", "4")
    assert rc == 0, err
    skipped = json.loads(out)
    card_k = json.loads((stdlib_olmoe / "config.json").read_text())["num_experts_per_tok"]
    assert skipped["routing"] == f"--topk 4 (card: {card_k}), --skip-threshold 0.9", skipped["routing"]
    assert 0 < skipped["skipped_slots"] < 1 and skipped["bpb"] != plain["bpb"]
    rc, out, err = run_main(capsys, *common, "--skip-threshold", "0.9", "--topk", "4")
    line = [x for x in out.splitlines() if x.startswith("# not the card's routing:")]
    assert rc == 0 and len(line) == 1 and "--skip-threshold 0.9" in line[0] and "% of the routed slots dropped" in line[0]
    cfg = json.loads((stdlib_olmoe / "config.json").read_text())
    for same in ([], ["--topk", str(cfg["num_experts_per_tok"])], ["--router", "softmax_topk"]):   # the card's own
        rc, out, err = run_main(capsys, *common, *same)
        assert rc == 0 and "not the card's routing" not in out, (same, out)
    rc, out, err = run_main(capsys, *common, "--router", "zipf")
    assert rc == 0 and "# not the card's routing: --router zipf (--zipf-s 1.2) (card: softmax_topk)" in out, out
    scores = [json.loads(run_main(capsys, *common, "--router", "zipf", "--json", "-")[1])["bpb"] for _ in range(2)]
    assert scores[0] == scores[1] != plain["bpb"]          # the synthetic router draws from the seeded generator


def test_pruning_refuses_quantized_or_sharded_settings(checkpoint):
    from minimoe.prune_cli import check_request, make_request
    cfg = build_model(str(checkpoint("olmoe")), "auto", dtype=torch.float32)[1]
    req = make_request("inter", 0.25, "reap", "uniform", None)
    for s in (run_settings.RunSettings(quant="int8"), run_settings.RunSettings(ep=2)):
        with pytest.raises(ValueError, match="prune first"):
            check_request(req, cfg, s)
    gptq = dataclasses.replace(cfg, extra={**cfg.extra, "quantization_config": {"quant_method": "gptq"}})
    with pytest.raises(ValueError, match="pre-quantized checkpoint's too"):                # before any calibration
        check_request(req, gptq, run_settings.RunSettings())


def test_bench_prune_times_the_pruned_shapes(tmp_path, capsys):
    from minimoe.bench import cli as bench
    ceilings = tmp_path / "c.json"
    ceilings.write_text(json.dumps({"bandwidth_GBps": 1e3, "matmul_TFLOPs": 1e3}))
    runs = {}
    for name, extra in (("plain", []), ("intra", ["--prune", "intra:0.5"]), ("inter", ["--prune", "inter:0.5"]),
                        ("skip", ["--skip-threshold", "0.9", "--profile"])):
        capsys.readouterr()
        rc = bench.main(["--device", "cpu", "--model", "olmoe-tiny", "--bs", "8", "--input-len", "4", "--output-len",
                         "4", "--warmup", "0", "--iters", "1", "--ceilings", ceilings, *extra])
        out, err = capsys.readouterr()
        assert rc == 0, err
        runs[name] = (out, json.loads(out.strip().splitlines()[-1]))
    assert "random tokens" in runs["intra"][0] and "only the pruned shapes are timed" in runs["intra"][0]
    experts = {k: v[1]["results"][0]["roofline"]["decode_step_bytes"]["experts"] for k, v in runs.items()}
    touched = {k: v[1]["results"][0]["roofline"]["experts_touched_per_layer"] for k, v in runs.items()}
    assert runs["intra"][1]["config"]["moe_intermediate_size"] == 16 and runs["inter"][1]["config"]["n_experts"] == 4
    per_expert = {k: experts[k] / touched[k] for k in runs}
    assert per_expert["intra"] == pytest.approx(per_expert["plain"] / 2)     # each expert read is half as wide
    assert touched["inter"] <= 4 and touched["skip"] < touched["plain"]
    assert "skipped" in runs["skip"][1]["results"][0]["profile"]["notes"]
    assert "prune" not in runs["plain"][1] and "prune" not in runs["skip"][1]
    assert {k: runs["intra"][1]["prune"][k] for k in ("kind", "ratio", "per_layer")} == \
        {"kind": "intra", "ratio": 0.5, "per_layer": "uniform"}
    assert runs["inter"][1]["prune"]["kind"] == "inter" and runs["inter"][1]["prune"]["method"]
    assert runs["intra"][1]["prune"]["calibration"] == "random:2048"      # what the header says it calibrated on
    assert "router=card:softmax_topk top_k=card:" in runs["plain"][0]     # the card's router and K, named
    res = {k: v[1]["results"][0] for k, v in runs.items()}
    assert "skipped_slots" not in res["plain"] and 0 < res["skip"]["skipped_slots"] < 1     # shown without --profile
    assert f"{res['skip']['skipped_slots']:.1%} of routed slots dropped in one eager decode step" in runs["skip"][0]


def test_weights_from_another_folder_are_named_as_loaded(checkpoint, tmp_path, capsys):
    """--model M --weights DIR runs DIR's tensors: the header, bench's and generate's JSON name DIR and its shapes."""
    from minimoe.bench import cli as bench
    card = checkpoint("olmoe")
    rc, _, err = run_main(capsys, "prune", "--model", card, "--method", "width", "--ratio", "0.5", "--calibration",
                          "random:64", "--out", tmp_path / "narrow")
    assert rc == 0, err
    ceilings = tmp_path / "c.json"
    ceilings.write_text(json.dumps({"bandwidth_GBps": 1e3, "matmul_TFLOPs": 1e3}))
    capsys.readouterr()
    rc = bench.main(["--device", "cpu", "--model", card, "--weights", tmp_path / "narrow", "--bs", "2",
                     "--input-len", "4", "--output-len", "2", "--warmup", "0", "--iters", "1", "--ceilings", ceilings])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    width = json.loads((Path(card) / "config.json").read_text())["intermediate_size"] // 2
    assert summary["weights"] == str((tmp_path / "narrow").resolve()) and str(card) not in summary["weights"]
    assert set(summary["config"]["moe_width_per_layer"]) == {width} and f" I={width} " in out
    rc, out, err = run_main(capsys, "generate", "--model", card, "--weights", tmp_path / "narrow", "--prompt-ids",
                            "1,2", "--max-new-tokens", "2", "--json", "-")
    assert rc == 0 and json.loads(out)["weights"] == str((tmp_path / "narrow").resolve()), err
    # a config card (no folder of its own) with another folder's tensors: pruned in bench.py, they are not "dummy"
    rc, _, err = run_main(capsys, "prune", "--model", "olmoe-tiny", "--method", "width", "--ratio", "0.5",
                          "--calibration", "random:64", "--out", tmp_path / "tiny")
    assert rc == 0, err
    rc = bench.main(["--device", "cpu", "--model", "olmoe-tiny", "--weights", tmp_path / "tiny", "--prune", "inter:0.5",
                     "--bs", "2", "--input-len", "4", "--output-len", "2", "--warmup", "0", "--iters", "1",
                     "--ceilings", ceilings])
    out, err = capsys.readouterr()
    assert rc == 0 and "pruned inter 50.0%" in out and "dummy weights" not in out, err


def test_header_gives_per_layer_counts_as_a_range(checkpoint, tmp_path, capsys):
    from minimoe.bench.report import _per_layer
    cfg = build_model(str(checkpoint("olmoe")), "auto", dtype=torch.float32)[1]
    assert _per_layer(cfg, cfg.layer_experts) == str(cfg.n_experts)
    uneven = dataclasses.replace(cfg, experts_per_layer=tuple(range(2, 2 + cfg.n_layers)))
    assert _per_layer(uneven, uneven.layer_experts) == f"2-{1 + cfg.n_layers} (per layer)"


def test_skip_count_mask_counts_only_the_tokens_it_keeps():
    """eval's overlapping windows count each token once (ExpertLoad.mask's twin)."""
    c = SkipCount(1, "cpu")
    ids = torch.tensor([[0, -1], [-1, -1], [3, 0]])                  # [T 3, K 2]
    c.mask = torch.tensor([True, False, True])
    c.record(0, ids)
    assert (int(c.slots[0]), int(c.dropped[0])) == (4, 1)
    c.mask = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="2 tokens, the router saw 3"):
        c.record(0, ids)
