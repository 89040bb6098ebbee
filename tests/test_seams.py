"""Guards the engine's seams: no import cycles and kernels at the ground floor; forward hooks fire on every
Linear / Router / Experts module of every family with PyTorch and Triton ops; one RunSettings round-trips
through the shared flags of every CLI; the multi-token `append` equals a prefill; checkpoints with uneven
expert counts and widths per layer load and match a float64 reference; a Placement reads only its slices."""
from __future__ import annotations

import argparse
import ast
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import FAMILIES, rel_err
from minimoe import settings as run_settings
from minimoe.experts import Experts
from minimoe.gate import Router
from minimoe.generate import Generator
from minimoe.linear import Linear
from minimoe.loader import build_model
from minimoe.placement import Placement

PACKAGE = Path(__file__).resolve().parent.parent / "minimoe"


# ---- imports ------------------------------------------------------------------------------------------

def _module_graph() -> dict:
    """{module: modules of the package it imports}, imports inside functions included."""
    mods = {".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
            for f in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                cands = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            for c in cands:
                if c in mods and c != name and c != "minimoe":
                    deps.add(c)
                    break
        graph[name] = deps
    return graph


def test_no_import_cycles_and_kernels_import_nothing_above_them():
    graph = _module_graph()
    assert "minimoe.kernels.fused_moe" in graph and "minimoe.bench.cli" in graph
    for mod, deps in graph.items():
        if mod.startswith("minimoe.kernels"):
            assert all(d.startswith("minimoe.kernels") for d in deps), (mod, deps)
        if not mod.startswith("minimoe.bench") and mod != "minimoe.__main__":
            assert not any(d.startswith("minimoe.bench") for d in deps), (mod, deps)   # the engine never measures
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            assert state.get(d) != "open", "import cycle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])


# ---- hooks ------------------------------------------------------------------------------------------------

HOOKED = (Linear, Router, Experts)


@pytest.mark.parametrize("ops", ["torch", "triton"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_hooks_fire_on_every_linear_router_and_experts(family, ops, hf_checkpoint):
    """Parallel plans and quantization wrap modules: each must be called through nn.Module.__call__."""
    if ops == "triton":
        pytest.importorskip("triton")
    folder, _ = hf_checkpoint(family)
    s = run_settings.RunSettings(experts="grouped", ops=ops, device="cpu")
    model, cfg, _ = build_model(str(folder), "auto", dtype=torch.float32, settings=s)
    fired = {name: 0 for name, m in model.named_modules() if isinstance(m, HOOKED)}
    assert any(isinstance(m, Router) for m in model.modules()) and fired
    for name, m in model.named_modules():
        if isinstance(m, HOOKED):
            m.register_forward_hook(lambda mod, args, out, name=name: fired.__setitem__(name, fired[name] + 1))
    Generator(model, 2, 8).generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), 3)
    silent = [name for name, n in fired.items() if n == 0]
    assert not silent, f"never called through __call__: {silent}"


# ---- run settings -----------------------------------------------------------------------------------------

def _random_settings(seed: int) -> run_settings.RunSettings:
    rng = random.Random(seed)
    return run_settings.RunSettings(
        device=rng.choice(["auto", "cpu"]), dtype=rng.choice(["auto", "bf16", "fp32"]),
        experts=rng.choice(run_settings.EXPERT_PATH_NAMES), attn=rng.choice(run_settings.ATTN_NAMES),
        ops=rng.choice(["auto", "torch", "triton"]), gemv=rng.choice(["auto", "torch"]),
        pdl=rng.choice(["auto", "off"]), eager=rng.random() < 0.5, eager_prefill=rng.random() < 0.5,
        router=(router := rng.choice([None, "zipf", "balanced"])), top_k=rng.choice([None, 1, 3]),
        zipf_s=rng.choice([1.2, 2.0]) if router == "zipf" else 1.2,          # --zipf-s only with --router zipf
        skip_threshold=rng.choice([0.0, 0.25]), quant=rng.choice(run_settings.QUANT_FORMATS),
        quant_lm_head=rng.random() < 0.5, ep=rng.choice([1, 2]), tp=rng.choice([1, 2]),
        dispatch=rng.choice(run_settings.DISPATCH_DESIGNS), draft=rng.choice([None, "qwen3-0.6b"]),
        draft_weights=rng.choice(["auto", "dummy"]), gamma=rng.choice(["0", "4", "auto"]),
        draft_accept=rng.choice([None, 0.8]), seed=rng.randrange(100))


@pytest.mark.parametrize("seed", range(8))
def test_settings_round_trip_through_the_flags(seed):
    s = _random_settings(seed)
    p = argparse.ArgumentParser()
    run_settings.add_args(p)
    assert run_settings.from_args(p.parse_args(run_settings.to_args(s))) == s


@pytest.mark.parametrize("default", ["loop", "fused", "grouped"])
def test_a_parsers_own_defaults_hold_and_fused_contradicts_an_explicit_path(default):
    """add_args(defaults=...) (profile_step.py defaults to the fused path): with no --experts the parser's own
    default is the path; --fused agrees with it only where no other path was named, even the loop's own name."""
    p = argparse.ArgumentParser()
    run_settings.add_args(p, run_settings.RunSettings(experts=default))
    assert run_settings.from_args(p.parse_args([])).experts == default
    assert run_settings.from_args(p.parse_args(["--fused"])).experts == "fused"
    assert run_settings.from_args(p.parse_args(["--experts", "grouped"])).experts == "grouped"
    for other in ("loop", "grouped"):
        with pytest.raises(ValueError, match=f"--fused contradicts --experts {other}"):
            run_settings.from_args(p.parse_args(["--fused", "--experts", other]))


def test_every_cli_takes_every_setting_flag():
    from minimoe.__main__ import parser as main_parser
    from minimoe.bench.cli import parser as bench_parser
    flags = run_settings.to_args(_random_settings(3)) + ["--eager", "--eager-prefill", "--quant-lm-head"]
    bench_args = bench_parser().parse_args(["--model", "olmoe-tiny"] + flags)
    gen_args = main_parser().parse_args(["generate", "--model", "olmoe-tiny", "--prompt-ids", "1"] + flags)
    eval_args = main_parser().parse_args(["eval", "--model", "olmoe-tiny"] + flags)
    assert run_settings.from_args(bench_args) == run_settings.from_args(gen_args) == run_settings.from_args(eval_args)


def test_resolve_gives_concrete_choices_and_names_bad_values():
    s = run_settings.RunSettings(device="cpu").resolve()
    assert (s.dtype, s.attn, s.ops, s.gemv, s.pdl) == ("fp32", "sdpa", "torch", "torch", "off")
    with pytest.raises(ValueError, match="--quant fp4: choose from none, fp8"):
        run_settings.RunSettings(quant="fp4").resolve()
    with pytest.raises(ValueError, match="--skip-threshold must be in"):
        run_settings.RunSettings(skip_threshold=1.5).resolve()


# ---- the multi-token step ---------------------------------------------------------------------------------

@pytest.mark.parametrize("card", ["olmoe-tiny", "deepseek-v3-tiny"])
def test_append_in_chunks_equals_one_prefill(card):
    model, cfg, _ = build_model(card, "dummy", dtype=torch.float32, seed=2)
    ids = torch.randint(0, cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    whole = Generator(model, 2, 16).append(ids)                                        # [B, S, V]
    gen = Generator(model, 2, 16)
    parts = torch.cat([gen.append(ids[:, :4]), gen.append(ids[:, 4:5]), gen.append(ids[:, 5:])], dim=1)
    assert whole.shape == (2, 11, cfg.vocab_size)
    assert rel_err(parts, whole) <= 1e-5
    assert gen.cache.lengths.tolist() == [11, 11]


# ---- uneven expert counts and widths (pruned checkpoints) -------------------------------------------------

D, H, V, L = 32, 4, 64, 3
EXPERTS, WIDTHS, K = (8, 6, 5), (24, 24, 16), 2


def _uneven_checkpoint(folder: Path) -> dict:
    """A Mixtral-family checkpoint whose three layers hold 8, 6 and 5 experts of widths 24, 24, 16."""
    g = torch.Generator().manual_seed(0)

    def mat(*shape):
        return torch.randn(*shape, generator=g) * shape[-1] ** -0.5
    t = {"model.embed_tokens.weight": torch.randn(V, D, generator=g), "model.norm.weight": 1 + 0.1 * torch.randn(D, generator=g),
         "lm_head.weight": mat(V, D)}
    for i, (E, I) in enumerate(zip(EXPERTS, WIDTHS)):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + 0.1 * torch.randn(D, generator=g),
                  p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(D, generator=g),
                  p + "self_attn.q_proj.weight": mat(D, D), p + "self_attn.k_proj.weight": mat(D, D),
                  p + "self_attn.v_proj.weight": mat(D, D), p + "self_attn.o_proj.weight": mat(D, D),
                  p + "block_sparse_moe.gate.weight": mat(E, D)})
        for e in range(E):
            q = f"{p}block_sparse_moe.experts.{e}."
            t.update({q + "w1.weight": mat(I, D), q + "w3.weight": mat(I, D), q + "w2.weight": mat(D, I)})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mixtral", "vocab_size": V, "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": H, "intermediate_size": max(WIDTHS), "num_local_experts": max(EXPERTS),
        "num_experts_per_tok": K, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "hidden_act": "silu"}))
    return {n: v.double() for n, v in t.items()}


def _reference_logits(t: dict, ids: torch.Tensor) -> torch.Tensor:
    """Mixtral written out in float64 from its published maths, one layer at a time."""
    def norm(x, w):
        return w * x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    S, hd = ids.shape[1], D // H
    inv = 1.0 / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(S, dtype=torch.float64), inv)
    cos, sin = ang.cos(), ang.sin()

    def rope(x):                                                      # [B, S, H, hd], rotate halves
        x1, x2 = x.chunk(2, -1)
        return torch.cat([x1 * cos[:, None] - x2 * sin[:, None], x2 * cos[:, None] + x1 * sin[:, None]], -1)
    x = t["model.embed_tokens.weight"][ids]
    for i, E in enumerate(EXPERTS):
        p = f"model.layers.{i}."
        h = norm(x, t[p + "input_layernorm.weight"])
        q, k, v = (h @ t[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
        q, k, v = (z.view(*z.shape[:2], H, hd) for z in (q, k, v))
        att = torch.nn.functional.scaled_dot_product_attention(rope(q).transpose(1, 2), rope(k).transpose(1, 2),
                                                               v.transpose(1, 2), is_causal=True)
        x = x + att.transpose(1, 2).reshape(x.shape) @ t[p + "self_attn.o_proj.weight"].T
        h = norm(x, t[p + "post_attention_layernorm.weight"])
        top, idx = (h @ t[p + "block_sparse_moe.gate.weight"].T).topk(K, -1)
        w = top.softmax(-1)
        out = torch.zeros_like(h)
        for e in range(E):
            q_ = f"{p}block_sparse_moe.experts.{e}."
            y = (torch.nn.functional.silu(h @ t[q_ + "w1.weight"].T) * (h @ t[q_ + "w3.weight"].T)) @ t[q_ + "w2.weight"].T
            out = out + y * (w * (idx == e)).sum(-1, keepdim=True)
        x = x + out
    return norm(x, t["model.norm.weight"]) @ t["lm_head.weight"].T


@pytest.mark.parametrize("experts", ["loop", "grouped"])
def test_uneven_experts_per_layer_load_and_match_float64(tmp_path, experts):
    t = _uneven_checkpoint(tmp_path / "uneven")
    s = run_settings.RunSettings(experts=experts, device="cpu")
    model, cfg, _ = build_model(str(tmp_path / "uneven"), "auto", dtype=torch.float32, settings=s)
    assert cfg.experts_per_layer == EXPERTS and cfg.moe_width_per_layer == WIDTHS
    assert [layer.ffn.experts.n_local for layer in model.layers] == list(EXPERTS)
    assert [layer.ffn.experts.hidden for layer in model.layers] == list(WIDTHS)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    ours = Generator(model, 2, 9).append(ids)
    assert rel_err(ours, _reference_logits(t, ids)) <= 1e-5


def test_placement_reads_only_a_ranks_experts_and_shard(tmp_path):
    """Experts [2, 4) of every layer and half of each q/k/v (heads 2-3) and of the LM head's vocabulary."""
    t = _uneven_checkpoint(tmp_path / "uneven")
    plan = Placement(experts={i: (2, 4) for i in range(L)},
                     shards={"layers.1.attn.wqkv.weight": (0, 1, 2), "lm_head.weight": (0, 1, 2)})
    part, _, _ = build_model(str(tmp_path / "uneven"), "auto", dtype=torch.float64, prepare=lambda net: plan)
    for i, (E, I) in enumerate(zip(EXPERTS, WIDTHS)):
        ex = part.layers[i].ffn.experts
        assert ex.n_local == 2 and ex.expert_offset == 2 and part.layers[i].ffn.router.n_experts == E
        want = torch.cat([t[f"model.layers.{i}.block_sparse_moe.experts.3.w1.weight"],
                          t[f"model.layers.{i}.block_sparse_moe.experts.3.w3.weight"]])
        assert torch.equal(ex.w13[1], want)
    half = slice(D // 2, D)
    want = torch.cat([t[f"model.layers.1.self_attn.{n}_proj.weight"][half] for n in "qkv"])
    assert torch.equal(part.layers[1].attn.wqkv.weight, want)
    assert torch.equal(part.lm_head.weight, t["lm_head.weight"][V // 2:])
