"""Guards the DeepSeekMoE-16B family ("deepseek", remote code, not in transformers) against an independent float64 reference forward written here from the published architecture (model-facts §A.2-A.4)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import rel_err
from minimoe.generate import Generator
from minimoe.layers import SwiGLU
from minimoe.loader import build_model
from minimoe.moe import MoE

TOL = 1e-4
V, D, L, H, HKV, HD = 96, 64, 3, 4, 2, 16
E, K, I_MOE, I_DENSE, N_SHARED = 8, 3, 24, 80, 2
THETA, EPS = 10000.0, 1e-6


def hf_config(norm_topk_prob: bool) -> dict:
    """A config.json in deepseek-moe-16b-base's form, toy sizes (GQA 4:2 to also exercise repeat_kv)."""
    return {"model_type": "deepseek", "architectures": ["DeepseekForCausalLM"], "vocab_size": V,
            "hidden_size": D, "intermediate_size": I_DENSE, "moe_intermediate_size": I_MOE,
            "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": HKV,
            "n_shared_experts": N_SHARED, "n_routed_experts": E, "num_experts_per_tok": K,
            "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": norm_topk_prob,
            "scoring_func": "softmax", "max_position_embeddings": 512, "rms_norm_eps": EPS,
            "rope_theta": THETA, "rope_scaling": None, "attention_bias": False, "tie_word_embeddings": False,
            "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}


def random_tensors(seed: int) -> dict:
    """Hub-named tensors: matrices N(0, 1/fan_in), norm weights near 1."""
    gen = torch.Generator().manual_seed(seed)

    def mat(out, inp):
        return torch.randn(out, inp, generator=gen) * inp ** -0.5

    def norm():
        return 1.0 + 0.2 * torch.randn(D, generator=gen)

    def mlp(prefix, width):
        return {prefix + "gate_proj.weight": mat(width, D), prefix + "up_proj.weight": mat(width, D),
                prefix + "down_proj.weight": mat(D, width)}

    t = {"model.embed_tokens.weight": torch.randn(V, D, generator=gen), "model.norm.weight": norm(),
         "lm_head.weight": mat(V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm(),
                  p + "self_attn.q_proj.weight": mat(H * HD, D), p + "self_attn.k_proj.weight": mat(HKV * HD, D),
                  p + "self_attn.v_proj.weight": mat(HKV * HD, D), p + "self_attn.o_proj.weight": mat(D, H * HD)})
        if i == 0:                                                  # first_k_dense_replace = 1
            t.update(mlp(p + "mlp.", I_DENSE))
        else:
            t[p + "mlp.gate.weight"] = mat(E, D)
            for e in range(E):
                t.update(mlp(f"{p}mlp.experts.{e}.", I_MOE))
            t.update(mlp(p + "mlp.shared_experts.", N_SHARED * I_MOE))
    return t


# ---- the float64 reference ------------------------------------------------------------------------


def rms(x, w):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


def rope_rotate_half(x, positions):
    """x [B, T, h, HD]: Llama RoPE, channel j paired with j + HD/2."""
    inv_freq = THETA ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD)      # [HD/2]
    ang = positions.double()[:, None] * inv_freq[None, :]                        # [T, HD/2]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., :HD // 2], x[..., HD // 2:]
    rotated = torch.cat([-x2, x1], -1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


def attention(h, w, p):
    Bn, T, _ = h.shape
    q = (h @ w[p + "q_proj.weight"].T).view(Bn, T, H, HD)
    k = (h @ w[p + "k_proj.weight"].T).view(Bn, T, HKV, HD)
    v = (h @ w[p + "v_proj.weight"].T).view(Bn, T, HKV, HD)
    pos = torch.arange(T)
    q, k = rope_rotate_half(q, pos), rope_rotate_half(k, pos)
    k, v = k.repeat_interleave(H // HKV, dim=2), v.repeat_interleave(H // HKV, dim=2)   # head h -> kv h//2
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(HD)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(Bn, T, H * HD)
    return out @ w[p + "o_proj.weight"].T


def swiglu(h, w, p):
    return (F.silu(h @ w[p + "gate_proj.weight"].T) * (h @ w[p + "up_proj.weight"].T)) @ w[p + "down_proj.weight"].T


def moe(h, w, p, norm_topk_prob):
    """softmax over E, top-K, renormalise only if asked, plus the always-on shared experts."""
    probs = (h @ w[p + "gate.weight"].T).softmax(-1)                             # [B, T, E]
    top_w, top_i = probs.topk(K, dim=-1)
    if norm_topk_prob:
        top_w = top_w / top_w.sum(-1, keepdim=True)
    out = swiglu(h, w, p + "shared_experts.")
    for e in range(E):
        weight = (top_w * (top_i == e)).sum(-1, keepdim=True)                    # 0 where e not chosen
        out = out + weight * swiglu(h, w, f"{p}experts.{e}.")
    return out


def reference_logits(w64: dict, ids: torch.Tensor, norm_topk_prob: bool) -> torch.Tensor:
    """ids [B, T] -> logits [B, T, V], float64, no cache: every position recomputed."""
    x = w64["model.embed_tokens.weight"][ids]
    for i in range(L):
        p = f"model.layers.{i}."
        x = x + attention(rms(x, w64[p + "input_layernorm.weight"]), w64, p + "self_attn.")
        h = rms(x, w64[p + "post_attention_layernorm.weight"])
        x = x + (swiglu(h, w64, p + "mlp.") if i == 0 else moe(h, w64, p + "mlp.", norm_topk_prob))
    return rms(x, w64["model.norm.weight"]) @ w64["lm_head.weight"].T


# ---- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["no-renorm", "renorm"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepseek-moe")
    tensors = random_tensors(seed=7)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(request.param)))
    return folder, {n: t.double() for n, t in tensors.items()}, request.param


def test_structure_dense_first_layer_then_moe_with_shared(checkpoint):
    folder, _, _ = checkpoint
    net, cfg, _ = build_model(str(folder), "auto", dtype=torch.float32)
    assert cfg.family == "deepseek" and cfg.router == "softmax_topk" and cfg.dense_layers == (0,)
    assert not cfg.router_fp32 and cfg.shared_intermediate_size == N_SHARED * I_MOE
    assert isinstance(net.layers[0].ffn, SwiGLU) and net.layers[0].ffn.hidden == I_DENSE
    assert all(isinstance(net.layers[i].ffn, MoE) for i in range(1, L))
    assert net.layers[1].ffn.shared.gate is None                   # DeepSeek's shared experts are ungated


def test_prefill_and_decode_match_float64_reference(checkpoint):
    folder, w64, renorm = checkpoint
    net, _, _ = build_model(str(folder), "auto", dtype=torch.float32)
    Bn, S, steps = 2, 6, 5
    ids = torch.randint(0, V, (Bn, S), generator=torch.Generator().manual_seed(3))
    gen = Generator(net, Bn, S + steps + 1)
    with torch.inference_mode():
        step = gen.cache.step(S, 0)
        ours = net(ids, step, gen.cache)                                            # [B, S, V]
        gen.cache.advance(step)
        ref = reference_logits(w64, ids, renorm)
        assert rel_err(ours, ref) <= TOL
        seq = ids
        for i in range(steps):
            tok = ref[:, -1].argmax(-1)                                             # [B]
            seq = torch.cat([seq, tok[:, None]], dim=1)
            step = gen.cache.step(1, S + i)
            ours = net(tok[:, None], step, gen.cache, select=-1)               # [B, V]
            gen.cache.advance(step)
            ref = reference_logits(w64, seq, renorm)
            assert rel_err(ours, ref[:, -1]) <= TOL, f"decode step {i}"


def test_renormalisation_changes_the_output(checkpoint):
    """The two parametrisations must differ, or the renorm test above proves nothing."""
    _, w64, _ = checkpoint
    ids = torch.arange(8)[None]
    assert rel_err(reference_logits(w64, ids, True), reference_logits(w64, ids, False)) > 1e-2
