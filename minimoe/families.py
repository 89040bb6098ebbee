"""Families: Hugging Face `config.json` -> `ModelConfig`, and checkpoint tensor names -> minimoe's.

One entry per `model_type`. An entry is two plain functions:
  * `config(hf: dict) -> ModelConfig`: every family quirk becomes a named field (see
    `../shared/reference/model-facts.md` for the sources of each default);
  * `weights(cfg) -> {our_name: recipe}`: where each minimoe tensor comes from in the checkpoint.

A recipe is a list of alternatives; an alternative is a list of parts; a part is a tensor name or,
for stacked experts, a list of names. The loader takes the first alternative whose tensors all
exist, concatenates parts along dim 0, and stacks per-expert parts into one [E, ...] tensor. So
minimoe stores q/k/v as one `wqkv` and gate/up as one `w13` (one GEMM each) while the Hub keeps them
apart; the second alternative for experts reads transformers-v5's in-memory fused layout.
"""
from __future__ import annotations

from .config import ModelConfig

# ---- config translation --------------------------------------------------------------------------


def _rope(hf: dict) -> tuple[float, dict | None]:
    """Read rope settings from the old (`rope_theta` + `rope_scaling`) or new (`rope_parameters`) form."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    merged = {**params, **scaling}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind != "yarn":
        raise NotImplementedError(f"rope scaling type {kind!r} is not supported (only default and yarn)")
    merged["type"] = "yarn"
    merged.pop("rope_type", None)
    merged.pop("rope_theta", None)
    return theta, merged


def _common(hf: dict, family: str, **kw) -> ModelConfig:
    theta, scaling = _rope(hf)
    n_heads = hf["num_attention_heads"]
    eos = hf.get("eos_token_id")
    base = dict(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        intermediate_size=hf.get("intermediate_size", 0),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=theta,
        rope_scaling=scaling,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        extra={"name": hf.get("_name_or_path", "")},
    )
    base.update(kw)
    return ModelConfig(**base)


def _olmoe(hf: dict) -> ModelConfig:
    bias = hf.get("attention_bias", False)
    return _common(hf, "olmoe", rms_norm_eps=hf.get("rms_norm_eps", 1e-5), qkv_bias=bias, o_bias=bias,
                   qk_norm="full", clip_qkv=hf.get("clip_qkv"),
                   n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"],
                   moe_intermediate_size=hf["intermediate_size"],
                   norm_topk_prob=hf.get("norm_topk_prob", False))


def _mixtral(hf: dict) -> ModelConfig:
    # Mixtral always renormalises: it takes top-k of the logits and softmaxes over those k.
    return _common(hf, "mixtral", sliding_window=hf.get("sliding_window"),
                   n_experts=hf["num_local_experts"], top_k=hf["num_experts_per_tok"],
                   moe_intermediate_size=hf["intermediate_size"], router="topk_softmax", norm_topk_prob=True)


def _qwen_moe_layers(hf: dict) -> tuple:
    step = hf.get("decoder_sparse_step", 1)
    only = set(hf.get("mlp_only_layers") or [])
    return tuple(i for i in range(hf["num_hidden_layers"]) if i in only or (i + 1) % step != 0)


def _qwen_window(hf: dict) -> int | None:
    return hf.get("sliding_window") if hf.get("use_sliding_window") else None


def _qwen2_moe(hf: dict) -> ModelConfig:
    shared = hf.get("shared_expert_intermediate_size", 0)
    return _common(hf, "qwen2_moe", qkv_bias=hf.get("qkv_bias", True), sliding_window=_qwen_window(hf),
                   n_experts=hf["num_experts"], top_k=hf["num_experts_per_tok"],
                   moe_intermediate_size=hf["moe_intermediate_size"], dense_layers=_qwen_moe_layers(hf),
                   norm_topk_prob=hf.get("norm_topk_prob", False),
                   shared_intermediate_size=shared, shared_expert_gate=shared > 0)


def _qwen3_moe(hf: dict) -> ModelConfig:
    bias = hf.get("attention_bias", False)
    experts = hf.get("num_experts") or hf["num_local_experts"]   # Hub name / transformers-v5 name
    return _common(hf, "qwen3_moe", qkv_bias=bias, o_bias=bias, qk_norm="head", sliding_window=_qwen_window(hf),
                   n_experts=experts, top_k=hf["num_experts_per_tok"],
                   moe_intermediate_size=hf["moe_intermediate_size"], dense_layers=_qwen_moe_layers(hf),
                   norm_topk_prob=hf.get("norm_topk_prob", True))


def _deepseek_moe_fields(hf: dict, default_method: str = "greedy") -> dict:
    """The MoE fields DeepSeekMoE, V2 and V3 share (dense-layer rule, shared experts, routing)."""
    e = hf.get("n_routed_experts") or 0
    first, freq = hf.get("first_k_dense_replace", 0), hf.get("moe_layer_freq", 1)
    dense = tuple(i for i in range(hf["num_hidden_layers"]) if not (e and i >= first and i % freq == 0))
    if hf.get("scoring_func", "softmax") not in ("softmax", "sigmoid"):
        raise NotImplementedError(f"scoring_func {hf['scoring_func']!r} is not supported")
    method = hf.get("topk_method") or default_method
    router = {"greedy": "softmax_topk", "group_limited_greedy": "group_limited_greedy",
              "noaux_tc": "sigmoid_group_bias"}.get(method)
    if router is None:
        raise NotImplementedError(f"topk_method {method!r} is not supported")
    return dict(n_experts=e, top_k=hf.get("num_experts_per_tok") or 0,
                moe_intermediate_size=hf.get("moe_intermediate_size", 0), dense_layers=dense, router=router,
                norm_topk_prob=hf.get("norm_topk_prob", False),
                routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
                n_group=hf.get("n_group") or 1, topk_group=hf.get("topk_group") or 1,
                router_bias=method == "noaux_tc", router_fp32=True,
                shared_intermediate_size=(hf.get("n_shared_experts") or 0) * hf.get("moe_intermediate_size", 0))


def _deepseek(hf: dict) -> ModelConfig:
    """DeepSeekMoE-16B: remote-code checkpoint, Llama attention; translated here, its code never run."""
    bias = hf.get("attention_bias", False)
    moe = _deepseek_moe_fields(hf)
    moe["router_fp32"] = False  # its MoEGate runs the gate in the activation dtype
    return _common(hf, "deepseek", qkv_bias=bias, o_bias=bias, **moe)


def _deepseek_mla(hf: dict, family: str) -> ModelConfig:
    """DeepSeek-V2 always rotates interleaved pairs; V3 does unless `rope_interleave` is false.
    V3 routes with sigmoid + bias (noaux_tc) when its config leaves topk_method out."""
    bias = hf.get("attention_bias", False)
    v3 = family == "deepseek_v3"
    interleave = hf.get("rope_interleave", True) if v3 else True
    interleave = True if interleave is None else interleave
    return _common(hf, family, attention="mla", qkv_bias=bias, o_bias=bias,
                   head_dim=hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"],
                   q_lora_rank=hf.get("q_lora_rank"), kv_lora_rank=hf["kv_lora_rank"],
                   qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
                   v_head_dim=hf["v_head_dim"],
                   rope_interleave=interleave, **_deepseek_moe_fields(hf, "noaux_tc" if v3 else "greedy"))


# Dense decoders: the draft models of speculative decoding (model-facts §A.1.c). n_experts = 0 makes
# every layer a SwiGLU; nothing else in the engine changes.

def _llama(hf: dict, family: str = "llama") -> ModelConfig:
    if hf.get("mlp_bias"):
        raise NotImplementedError("mlp_bias is not supported")
    bias = hf.get("attention_bias", False)
    return _common(hf, family, qkv_bias=bias, o_bias=bias, sliding_window=hf.get("sliding_window"))


def _qwen2(hf: dict) -> ModelConfig:
    return _common(hf, "qwen2", qkv_bias=True, sliding_window=_qwen_window(hf))


def _qwen3(hf: dict) -> ModelConfig:
    bias = hf.get("attention_bias", False)
    return _common(hf, "qwen3", qkv_bias=bias, o_bias=bias, qk_norm="head", sliding_window=_qwen_window(hf))


# ---- checkpoint names ----------------------------------------------------------------------------


def _attn_names(cfg: ModelConfig, i: int) -> dict:
    a, p = f"layers.{i}.attn.", f"model.layers.{i}.self_attn."
    if cfg.attention == "mla":
        names = {a + "wkv_a.weight": [[p + "kv_a_proj_with_mqa.weight"]],
                 a + "kv_norm.weight": [[p + "kv_a_layernorm.weight"]],
                 a + "wkv_b.weight": [[p + "kv_b_proj.weight"]],
                 a + "wo.weight": [[p + "o_proj.weight"]]}
        if cfg.q_lora_rank:
            names.update({a + "wq_a.weight": [[p + "q_a_proj.weight"]],
                          a + "q_norm.weight": [[p + "q_a_layernorm.weight"]],
                          a + "wq_b.weight": [[p + "q_b_proj.weight"]]})
        else:
            names[a + "wq.weight"] = [[p + "q_proj.weight"]]
        return names
    names = {a + "wqkv.weight": [[p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight"]],
             a + "wo.weight": [[p + "o_proj.weight"]]}
    if cfg.qkv_bias:
        names[a + "wqkv.bias"] = [[p + "q_proj.bias", p + "k_proj.bias", p + "v_proj.bias"]]
    if cfg.o_bias:
        names[a + "wo.bias"] = [[p + "o_proj.bias"]]
    if cfg.qk_norm:
        names[a + "q_norm.weight"] = [[p + "q_norm.weight"]]
        names[a + "k_norm.weight"] = [[p + "k_norm.weight"]]
    return names


def _mlp_names(ours: str, hub: str, gate="gate_proj", up="up_proj", down="down_proj") -> dict:
    return {ours + "w13.weight": [[f"{hub}{gate}.weight", f"{hub}{up}.weight"]],
            ours + "w2.weight": [[f"{hub}{down}.weight"]]}


def _moe_names(cfg: ModelConfig, i: int, prefix: str, expert=("gate_proj", "up_proj", "down_proj")) -> dict:
    f, m, v5 = f"layers.{i}.ffn.", f"model.layers.{i}.{prefix}.", f"model.layers.{i}.mlp."
    g, u, d = expert
    E = cfg.n_experts
    names = {
        f + "gate.weight": [[m + "gate.weight"], [v5 + "gate.weight"]],
        f + "experts.w13": [[[f"{m}experts.{e}.{g}.weight", f"{m}experts.{e}.{u}.weight"] for e in range(E)],
                            [v5 + "experts.gate_up_proj"]],
        f + "experts.w2": [[[f"{m}experts.{e}.{d}.weight"] for e in range(E)], [v5 + "experts.down_proj"]],
    }
    if cfg.router_bias:
        names[f + "gate_bias"] = [[m + "gate.e_score_correction_bias"]]
    if cfg.shared_intermediate_size:
        hub_shared = "shared_expert." if cfg.shared_expert_gate else "shared_experts."
        names.update(_mlp_names(f + "shared.", m + hub_shared))
    if cfg.shared_expert_gate:
        names[f + "shared_gate.weight"] = [[m + "shared_expert_gate.weight"]]
    return names


def weight_names(cfg: ModelConfig) -> dict:
    """{minimoe tensor name: recipe} for the whole model (see the module docstring)."""
    spec = FAMILIES[cfg.family]
    names = {"embed.weight": [["model.embed_tokens.weight"]], "norm.weight": [["model.norm.weight"]]}
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = [["lm_head.weight"]]
    for i in range(cfg.n_layers):
        names[f"layers.{i}.attn_norm.weight"] = [[f"model.layers.{i}.input_layernorm.weight"]]
        names[f"layers.{i}.ffn_norm.weight"] = [[f"model.layers.{i}.post_attention_layernorm.weight"]]
        names.update(_attn_names(cfg, i))
        if cfg.is_moe_layer(i):
            names.update(_moe_names(cfg, i, spec["moe_prefix"], spec["expert_names"]))
        else:
            names.update(_mlp_names(f"layers.{i}.ffn.", f"model.layers.{i}.mlp."))
    return names


def ignored_name(cfg: ModelConfig, name: str) -> bool:
    """Checkpoint tensors we knowingly skip: rope buffers, a tied model's head (it *is* the embedding),
    DeepSeek-V3's multi-token-prediction layer (`model.layers.{n_layers}`, not used for decoding)."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    if cfg.tie_word_embeddings and name == "lm_head.weight":
        return True
    if cfg.family == "deepseek_v3" and name.startswith("model.layers."):
        return int(name.split(".")[2]) >= cfg.n_layers
    return False


FAMILIES = {
    "olmoe": dict(config=_olmoe, moe_prefix="mlp", expert_names=("gate_proj", "up_proj", "down_proj")),
    "mixtral": dict(config=_mixtral, moe_prefix="block_sparse_moe", expert_names=("w1", "w3", "w2")),
    "qwen2_moe": dict(config=_qwen2_moe, moe_prefix="mlp", expert_names=("gate_proj", "up_proj", "down_proj")),
    "qwen3_moe": dict(config=_qwen3_moe, moe_prefix="mlp", expert_names=("gate_proj", "up_proj", "down_proj")),
    "deepseek": dict(config=_deepseek, moe_prefix="mlp", expert_names=("gate_proj", "up_proj", "down_proj")),
    "deepseek_v2": dict(config=lambda hf: _deepseek_mla(hf, "deepseek_v2"), moe_prefix="mlp",
                        expert_names=("gate_proj", "up_proj", "down_proj")),
    "deepseek_v3": dict(config=lambda hf: _deepseek_mla(hf, "deepseek_v3"), moe_prefix="mlp",
                        expert_names=("gate_proj", "up_proj", "down_proj")),
    "llama": dict(config=_llama, moe_prefix="mlp", expert_names=()),
    "mistral": dict(config=lambda hf: _llama(hf, "mistral"), moe_prefix="mlp", expert_names=()),
    "qwen2": dict(config=_qwen2, moe_prefix="mlp", expert_names=()),
    "qwen3": dict(config=_qwen3, moe_prefix="mlp", expert_names=()),
}


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face config.json dict; an unknown model_type names the supported ones."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"unsupported model_type {family!r}; minimoe supports: {', '.join(sorted(FAMILIES))}")
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    if hf.get("quantization_config"):
        raise NotImplementedError("pre-quantized checkpoints (quantization_config) are not supported; "
                                  "use a bf16/fp16/fp32 checkpoint")
    try:
        return FAMILIES[family]["config"](hf)
    except KeyError as e:
        raise ValueError(f"config.json for model_type {family!r} lacks the field {e.args[0]!r}") from None
