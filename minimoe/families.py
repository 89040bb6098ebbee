"""Families: a Hugging Face `config.json` -> `ModelConfig`, one translation per `model_type`.

Every family quirk becomes a named field of ModelConfig, and a key that config.json leaves out takes
the family's reference default: the tables beside each translation (`config_fields.py` reads through
them; `../shared/reference/model-facts.md` has the published values). Nothing downstream looks at
`model_type` again. Where each tensor comes from in a checkpoint is checkpoint_names.py.
"""
from __future__ import annotations

from .config import ModelConfig
from .config_fields import ConfigError, Fields, UnsupportedConfig, common, experts, gqa, qwen_window
from .families_dense import _llama, _mistral, _qwen2, _qwen3

OLMOE_DEFAULTS = dict(   # transformers OlmoeConfig
    intermediate_size=2048, num_key_value_heads=None, head_dim=None, max_position_embeddings=4096,
    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=None, eos_token_id=50279,
    attention_bias=False, clip_qkv=None, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False)


def _olmoe(hf: dict) -> ModelConfig:
    """OLMoE: RMSNorm over the whole q and k projections, optional q/k/v clipping, bias on q/k/v/o."""
    f = Fields(hf, "olmoe", OLMOE_DEFAULTS)
    bias = f.flag("attention_bias")
    return common(f, **gqa(f), qkv_bias=bias, o_bias=bias, qk_norm="full",
                   clip_qkv=f.number("clip_qkv", null=True), **experts(f, "num_experts", "num_local_experts"),
                   moe_intermediate_size=f.integer("intermediate_size", low=1),
                   norm_topk_prob=f.flag("norm_topk_prob"))


MIXTRAL_DEFAULTS = dict(   # transformers MixtralConfig: its rope theta is 1e6, not the usual 1e4
    intermediate_size=14336, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=1e6, bos_token_id=1, eos_token_id=2,
    sliding_window=None, num_local_experts=8, num_experts_per_tok=2)


def _mixtral(hf: dict) -> ModelConfig:
    """Mixtral always renormalises (no flag): it takes top-k of the logits and softmaxes over those k."""
    f = Fields(hf, "mixtral", MIXTRAL_DEFAULTS)
    return common(f, **gqa(f), sliding_window=f.integer("sliding_window", low=1, null=True),
                   **experts(f, "num_local_experts", "num_experts"),
                   moe_intermediate_size=f.integer("intermediate_size", low=1), router="topk_softmax",
                   norm_topk_prob=True)


def _qwen_moe_layers(f: Fields) -> tuple:
    """Dense layers: those in mlp_only_layers, and all but every decoder_sparse_step-th."""
    step = f.integer("decoder_sparse_step", low=1)
    only = set(f.ids("mlp_only_layers"))
    return tuple(i for i in range(f.integer("num_hidden_layers", low=1)) if i in only or (i + 1) % step != 0)




QWEN2_MOE_DEFAULTS = dict(   # transformers Qwen2MoeConfig: q/k/v bias and a 5632-wide shared expert by default
    intermediate_size=5632, num_key_value_heads=16, head_dim=None, max_position_embeddings=32768,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
    qkv_bias=True, use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None,
    num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
    norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=None)


def _qwen2_moe(hf: dict) -> ModelConfig:
    """Qwen1.5/Qwen2-MoE: q/k/v bias, a shared expert scaled by sigmoid(gate(x))."""
    f = Fields(hf, "qwen2_moe", QWEN2_MOE_DEFAULTS)
    shared = f.integer("shared_expert_intermediate_size")
    return common(f, **gqa(f), qkv_bias=f.flag("qkv_bias"),
                   sliding_window=qwen_window(f, lambda i, last: i % 2 == 0 and i < last),
                   **experts(f, "num_experts"), moe_intermediate_size=f.integer("moe_intermediate_size", low=1),
                   dense_layers=_qwen_moe_layers(f), norm_topk_prob=f.flag("norm_topk_prob"),
                   shared_intermediate_size=shared, shared_expert_gate=shared > 0)


QWEN3_MOE_DEFAULTS = dict(   # transformers Qwen3MoeConfig: note norm_topk_prob is false, though the cards set it
    intermediate_size=6144, num_key_value_heads=4, head_dim=None, max_position_embeddings=32768,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
    attention_bias=False, use_sliding_window=False, sliding_window=4096, num_local_experts=128,
    num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=False, decoder_sparse_step=1,
    mlp_only_layers=None)


def _qwen3_moe(hf: dict) -> ModelConfig:
    """Qwen3-MoE: per-head q/k RMSNorm, an explicit head_dim; its window, when on, covers every layer."""
    f = Fields(hf, "qwen3_moe", QWEN3_MOE_DEFAULTS)
    bias = f.flag("attention_bias")
    window = f.integer("sliding_window", low=1, null=True) if f.flag("use_sliding_window") else None
    return common(f, **gqa(f), qkv_bias=bias, o_bias=bias, qk_norm="head", sliding_window=window,
                   **experts(f, "num_local_experts", "num_experts"),     # transformers-v5 name / Hub name
                   moe_intermediate_size=f.integer("moe_intermediate_size", low=1), dense_layers=_qwen_moe_layers(f),
                   norm_topk_prob=f.flag("norm_topk_prob"))


def _deepseek_ffn(f: Fields, n_experts: int, moe_layer_freq: int = 1) -> dict:
    """The DeepSeek FFN layout: layers below first_k_dense_replace (and, in DeepSeekMoE, those off the
    moe_layer_freq beat) stay dense; MoE layers add n_shared_experts always-on experts as one MLP."""
    first, width = f.integer("first_k_dense_replace"), f.integer("moe_intermediate_size", low=1)
    dense = tuple(i for i in range(f.integer("num_hidden_layers", low=1))
                  if not (n_experts and i >= first and i % moe_layer_freq == 0))
    return dict(moe_intermediate_size=width, dense_layers=dense,
                shared_intermediate_size=(f.integer("n_shared_experts", null=True) or 0) * width)


def _groups(f: Fields, n_experts: int, min_size: int = 1) -> dict:
    """Group-limited routing: the experts in n_group equal groups, of which topk_group survive per token."""
    n, k = f.integer("n_group", low=1, null=True), f.integer("topk_group", low=1, null=True)
    if n is None or k is None:
        raise ConfigError(f"group-limited routing needs n_group and topk_group, got n_group={n!r}, topk_group={k!r}")
    if n_experts % n or n_experts // n < min_size:
        raise ConfigError(f"n_group ({n}) must split the {n_experts} routed experts into equal groups "
                          f"of at least {min_size}")
    if k > n:
        raise ConfigError(f"topk_group ({k}) must be at most n_group ({n})")
    return dict(n_group=n, topk_group=k)


def _mla(f: Fields, interleave: bool) -> dict:
    """DeepSeek-V2/V3 latent attention. No KV-head count (the cache holds one latent per token, so
    n_kv_heads is nominal) and no head_dim key (transformers overwrites it with qk_rope_head_dim)."""
    n_heads = f.integer("num_attention_heads", low=1)
    nope, rope = f.integer("qk_nope_head_dim", low=1), f.integer("qk_rope_head_dim", low=1)
    if rope % 2:
        raise ConfigError(f"qk_rope_head_dim ({rope}) must be even: rotary embedding turns channel pairs")
    bias = f.flag("attention_bias")
    return dict(attention="mla", n_kv_heads=n_heads, head_dim=nope + rope, qkv_bias=bias, o_bias=bias,
                q_lora_rank=f.integer("q_lora_rank", low=1, null=True), kv_lora_rank=f.integer("kv_lora_rank", low=1),
                qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=f.integer("v_head_dim", low=1),
                rope_interleave=interleave)


DEEPSEEK_DEFAULTS = dict(   # DeepSeekMoE's remote configuration_deepseek.py (DeepseekConfig); no experts = dense
    intermediate_size=11008, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=100000, eos_token_id=100001,
    attention_bias=False, n_routed_experts=None, num_experts_per_tok=None, moe_intermediate_size=1407,
    n_shared_experts=None, first_k_dense_replace=0, moe_layer_freq=1, norm_topk_prob=False, scoring_func="softmax")


def _deepseek(hf: dict) -> ModelConfig:
    """DeepSeekMoE-16B: remote-code checkpoint, Llama attention; translated here, its code never run.
    Its `MoEGate` is greedy softmax top-k, renormalised only when top_k > 1: no routed scaling, no
    groups, no topk_method. Its rotary embedding knows no YaRN, and its head_dim is always hidden / heads."""
    f = Fields(hf, "deepseek", DEEPSEEK_DEFAULTS)
    f.choice("scoring_func", ("softmax",))
    bias = f.flag("attention_bias")
    moe = experts(f, "n_routed_experts")
    return common(f, rope_kinds=("default",), **gqa(f, head_dim_key=False), qkv_bias=bias, o_bias=bias,
                   **moe, **_deepseek_ffn(f, moe["n_experts"], f.integer("moe_layer_freq", low=1)),
                   norm_topk_prob=f.flag("norm_topk_prob") and moe["top_k"] > 1,
                   router_fp32=False)   # its MoEGate runs the gate in the activation dtype


DEEPSEEK_V2_DEFAULTS = dict(   # transformers DeepseekV2Config (+ scoring_func from DeepSeek-V2's remote code)
    intermediate_size=11008, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False,
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    n_routed_experts=64, num_experts_per_tok=None, moe_intermediate_size=1407, n_shared_experts=2,
    first_k_dense_replace=0, topk_method="greedy", n_group=None, topk_group=None, routed_scaling_factor=1.0,
    scoring_func="softmax")
V2_ROUTERS = {"greedy": "softmax_topk", "group_limited_greedy": "group_limited_greedy"}


def _deepseek_v2(hf: dict) -> ModelConfig:
    """DeepSeek-V2(-Lite): MLA rotating interleaved pairs, softmax routing (greedy or group-limited)
    scaled by routed_scaling_factor. transformers' V2 router never renormalises, whatever
    norm_topk_prob says, so minimoe ignores the key too (every published V2 config sets it false);
    like transformers it also ignores moe_layer_freq: every layer from first_k_dense_replace is MoE."""
    f = Fields(hf, "deepseek_v2", DEEPSEEK_V2_DEFAULTS)
    if f.flag("mlp_bias"):
        raise UnsupportedConfig("mlp_bias is not supported")
    f.choice("scoring_func", ("softmax",))      # the remote code refuses others; transformers has no key
    method = f.choice("topk_method", tuple(V2_ROUTERS))
    moe = experts(f, "n_routed_experts", "num_experts")
    groups = _groups(f, moe["n_experts"]) if method == "group_limited_greedy" and moe["n_experts"] else {}
    return common(f, softmax_mscale=True, **_mla(f, interleave=True), **moe,
                   **_deepseek_ffn(f, moe["n_experts"]), router=V2_ROUTERS[method], **groups,
                   routed_scaling_factor=f.number("routed_scaling_factor"), router_fp32=True)


DEEPSEEK_V3_DEFAULTS = dict(   # transformers DeepseekV3Config (+ the last two from DeepSeek-V3's remote code)
    intermediate_size=18432, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, bos_token_id=0, eos_token_id=1, attention_bias=False, rope_interleave=True,
    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    n_routed_experts=256, num_experts_per_tok=8, moe_intermediate_size=2048, n_shared_experts=1,
    first_k_dense_replace=3, n_group=8, topk_group=4, norm_topk_prob=True, routed_scaling_factor=2.5,
    topk_method="noaux_tc", scoring_func="sigmoid")


def _deepseek_v3(hf: dict) -> ModelConfig:
    """DeepSeek-V3: MLA with q_lora, sigmoid scores plus a selection bias, groups ranked by the sum of
    their best two scores (so each group needs two experts). It rotates interleaved pairs unless
    `rope_interleave` is false (null counts as false, as in transformers). transformers always routes
    this way whatever topk_method / scoring_func say; DeepSeek's code refuses other values, and so
    does minimoe."""
    f = Fields(hf, "deepseek_v3", DEEPSEEK_V3_DEFAULTS)
    f.choice("scoring_func", ("sigmoid",))
    f.choice("topk_method", ("noaux_tc",))
    moe = experts(f, "n_routed_experts", "num_local_experts")
    groups = _groups(f, moe["n_experts"], min_size=2) if moe["n_experts"] else {}
    return common(f, softmax_mscale=True, **_mla(f, f.flag("rope_interleave")), **moe,
                   **_deepseek_ffn(f, moe["n_experts"]), router="sigmoid_group_bias", **groups, router_bias=True,
                   norm_topk_prob=f.flag("norm_topk_prob"), routed_scaling_factor=f.number("routed_scaling_factor"),
                   router_fp32=True)


def _deepseek_mla(hf: dict, family: str) -> ModelConfig:
    """FAMILIES' entry for deepseek_v2 and deepseek_v3."""
    return {"deepseek_v2": _deepseek_v2, "deepseek_v3": _deepseek_v3}[family](hf)




FAMILIES = {      # model_type -> translation
    "olmoe": _olmoe,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek": _deepseek,
    "deepseek_v2": lambda hf: _deepseek_mla(hf, "deepseek_v2"),
    "deepseek_v3": lambda hf: _deepseek_mla(hf, "deepseek_v3"),
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
}


def config_from_hf(hf: dict) -> ModelConfig:
    """Translate a Hugging Face config.json dict; an unknown model_type names the supported ones."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"unsupported model_type {family!r}; minimoe supports: {', '.join(sorted(FAMILIES))}")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedConfig(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    quantized = hf.get("quantization_config")
    if quantized:                   # fp8 128x128 blocks, GPTQ / AWQ int4 load (prequant*.py); other kinds are refused
        import dataclasses
        from .prequant import unsupported
        if unsupported(quantized):
            raise UnsupportedConfig(unsupported(quantized))
        cfg = FAMILIES[family](hf)
        return _per_layer(dataclasses.replace(cfg, extra={**cfg.extra, "quantization_config": quantized}), hf)
    return _per_layer(FAMILIES[family](hf), hf)


def _per_layer(cfg: ModelConfig, hf: dict) -> ModelConfig:
    """minimoe's own fields for a checkpoint whose MoE layers differ (a globally ranked pruning, hf_save.py):
    `num_experts_per_layer` / `moe_intermediate_size_per_layer`, one int a layer (0 for a dense layer). Read
    here so that checks made before loading (--topk, --ep) see each layer's count; the loader takes the
    counts from the tensors again (loader.with_checkpoint_shapes). Raises ConfigError when malformed."""
    import dataclasses
    got = {}
    for key, field in (("num_experts_per_layer", "experts_per_layer"),
                       ("moe_intermediate_size_per_layer", "moe_width_per_layer")):
        v = hf.get(key)
        if v is None:
            continue
        if (not isinstance(v, list) or len(v) != cfg.n_layers
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
                or any(v[i] < 1 for i in range(cfg.n_layers) if cfg.is_moe_layer(i))):
            raise ConfigError(f"{key} must list {cfg.n_layers} counts, at least 1 for each MoE layer; got {v!r}")
        got[field] = tuple(v)
    return dataclasses.replace(cfg, **got) if got else cfg
