"""Guards parity with transformers: for every family a tiny random checkpoint saved by save_pretrained and loaded by minimoe gives the same prefill and cached-decode logits (rel. err <= 1e-4) and the same 32 greedy tokens, through the API and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import FAMILIES, VOCAB, rel_err

pytest.importorskip("transformers")

from minimoe.__main__ import main  # noqa: E402
from minimoe.generate import Generator  # noqa: E402
from minimoe.loader import build_model  # noqa: E402

TOL = 1e-4                 # float32 on both sides; measured ~1e-6
B, S, N_DECODE, N_GEN = 2, 7, 16, 32

# What each tiny config must translate to, so the suite provably covers the quirks it claims to.
EXPECTED_CFG = {
    "olmoe": dict(n_experts=7, top_k=3, norm_topk_prob=False, qk_norm="full", o_bias=True, qkv_bias=True,
                  clip_qkv=2.0, router="softmax_topk"),
    "mixtral": dict(n_experts=5, top_k=2, n_kv_heads=2, tie_word_embeddings=True, router="topk_softmax"),
    "qwen2_moe": dict(shared_expert_gate=True, shared_intermediate_size=48, qkv_bias=True, o_bias=False,
                      n_kv_heads=2, norm_topk_prob=False, dense_layers=(1,)),
    "qwen3_moe": dict(head_dim=24, qk_norm="head", n_kv_heads=2, norm_topk_prob=True, top_k=3),
    "deepseek_v2": dict(attention="mla", q_lora_rank=None, router="group_limited_greedy", n_group=4,
                        topk_group=2, routed_scaling_factor=1.5, dense_layers=(0,), shared_intermediate_size=64,
                        rope_interleave=True),
    "deepseek_v3": dict(attention="mla", q_lora_rank=24, router="sigmoid_group_bias", router_bias=True,
                        n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                        dense_layers=(0,), shared_intermediate_size=32),
}


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, hf_checkpoint):
    """(family, checkpoint dir, transformers model, minimoe model, minimoe config)."""
    folder, hf = hf_checkpoint(request.param)
    net, cfg, loaded_from = build_model(str(folder), "auto", dtype=torch.float32)
    assert loaded_from == folder
    return request.param, folder, hf, net, cfg


def _prompts(seed: int, batch: int = B) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, S), generator=torch.Generator().manual_seed(seed))


def test_tiny_config_covers_its_quirks(pair):
    family, _, hf, _, cfg = pair
    for field, want in EXPECTED_CFG[family].items():
        assert getattr(cfg, field) == want, field
    if family in ("deepseek_v2", "deepseek_v3"):
        assert cfg.rope_scaling["type"] == "yarn" and cfg.rope_scaling["factor"] == 4.0
        assert cfg.softmax_scale > cfg.qk_head_dim ** -0.5          # YaRN's mscale^2 is applied
    if family == "deepseek_v3":
        assert hf.model.layers[1].mlp.gate.e_score_correction_bias.abs().min() > 0


def _mixtral_without_renorm(net):
    net.cfg.router, net.cfg.norm_topk_prob = "softmax_topk", False             # top-2 probabilities as they are


def _zero_v3_bias(net):
    for layer in net.layers[1:]:
        layer.ffn.router.bias.data.zero_()


def _ungate_shared(net):
    for layer in net.layers:
        if getattr(layer.ffn, "shared", None) is not None:
            layer.ffn.shared.gate = None


# one switch per family that undoes the quirk its tiny config is there to test
UNDO_QUIRK = {
    "olmoe": lambda net: setattr(net.cfg, "clip_qkv", None),
    "mixtral": _mixtral_without_renorm,
    "qwen2_moe": _ungate_shared,
    "qwen3_moe": lambda net: setattr(net.cfg, "norm_topk_prob", False),
    "deepseek_v2": lambda net: setattr(net.cfg, "topk_group", 4),            # no group limit
    "deepseek_v3": _zero_v3_bias,
}


def test_each_quirk_changes_the_logits(pair):
    """Parity proves a quirk is implemented only if getting it wrong would break parity."""
    family, folder, _, net, _ = pair
    ids = _prompts(seed=4)
    other, _, _ = build_model(str(folder), "auto", dtype=torch.float32)       # a private copy to mutate
    UNDO_QUIRK[family](other)
    logits = {}
    for name, m in (("ref", net), ("undone", other)):
        gen = Generator(m, B, S + 1)
        with torch.inference_mode():
            logits[name] = m(ids, gen.cache.step(S, 0), gen.cache)
    assert rel_err(logits["undone"], logits["ref"]) > 100 * TOL


def test_prefill_and_cached_decode_logits(pair):
    family, _, hf, net, _ = pair
    ids = _prompts(seed=1)
    gen = Generator(net, B, S + N_DECODE + 1)
    with torch.inference_mode():
        ref = hf(ids, use_cache=True)
        step = gen.cache.step(S, 0)
        ours = net(ids, step, gen.cache)                                       # [B, S, V]
        gen.cache.advance(step)
        assert ours.shape == ref.logits.shape
        assert rel_err(ours, ref.logits) <= TOL, "prefill"
        past, tok = ref.cache, ref.logits[:, -1].argmax(-1)
        worst = 0.0
        for i in range(N_DECODE):
            r = hf(tok[:, None], cache=past, use_cache=True)
            past = r.cache
            step = gen.cache.step(1, S + i)
            ours = net(tok[:, None], step, gen.cache, select=-1)          # [B, V]
            gen.cache.advance(step)
            worst = max(worst, rel_err(ours, r.logits[:, -1]))
            tok = r.logits[:, -1].argmax(-1)
    assert worst <= TOL, f"{family} decode"


def _hf_greedy(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N_GEN)
    assert out.shape == (ids.shape[0], ids.shape[1] + N_GEN)
    return out[:, ids.shape[1]:]


def test_greedy_generation_matches_hf(pair):
    _, _, hf, net, _ = pair
    ids = _prompts(seed=2)
    ours = Generator(net, B, S + N_GEN + 1).generate(ids, N_GEN)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, _hf_greedy(hf, ids))


def test_cli_greedy_matches_hf(pair, capsys):
    _, folder, hf, _, _ = pair
    ids = _prompts(seed=3, batch=1)
    rc = main(["generate", "--model", str(folder), "--prompt-ids", ",".join(map(str, ids[0].tolist())),
               "--max-new-tokens", str(N_GEN), "--json", "-", "--dtype", "fp32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out)
    assert got["prompt_ids"] == ids[0].tolist()
    assert got["new_ids"] == _hf_greedy(hf, ids).tolist()
