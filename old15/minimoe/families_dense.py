"""Dense decoder families (Llama, Mistral, Qwen2, Qwen3): the draft models of speculative decoding.

`n_experts = 0` makes every layer a SwiGLU; nothing else in the engine changes. Each translation reads
through the defaults of its transformers config class, as the MoE families do (families.py).
Reference: model-facts §A.1.c.
"""
from __future__ import annotations

from .config import ModelConfig
from .config_fields import Fields, UnsupportedConfig, common, gqa, qwen_window

LLAMA_DEFAULTS = dict(   # transformers LlamaConfig (which has no sliding window)
    intermediate_size=11008, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
    attention_bias=False, mlp_bias=False)
MISTRAL_DEFAULTS = dict(   # transformers MistralConfig: a 4096 window unless config.json says null
    intermediate_size=14336, num_key_value_heads=8, head_dim=None, max_position_embeddings=131072,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
    sliding_window=4096)
QWEN2_DEFAULTS = dict(   # transformers Qwen2Config
    intermediate_size=22016, num_key_value_heads=32, head_dim=None, max_position_embeddings=32768,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
    use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None)
QWEN3_DEFAULTS = {**QWEN2_DEFAULTS, "head_dim": 128, "attention_bias": False}   # transformers Qwen3Config


def _llama(hf: dict, family: str = "llama") -> ModelConfig:
    """Llama: optional bias on q/k/v/o."""
    f = Fields(hf, "llama", LLAMA_DEFAULTS)
    if f.flag("mlp_bias"):
        raise UnsupportedConfig("mlp_bias is not supported")
    bias = f.flag("attention_bias")
    return common(f, **gqa(f), qkv_bias=bias, o_bias=bias)


def _mistral(hf: dict) -> ModelConfig:
    """Mistral: no biases at all (its attention ignores attention_bias), a sliding window on every layer."""
    f = Fields(hf, "mistral", MISTRAL_DEFAULTS)
    return common(f, **gqa(f), sliding_window=f.integer("sliding_window", low=1, null=True))


def _qwen2(hf: dict) -> ModelConfig:
    """Qwen2: bias on q/k/v always (no flag), none on o; layers from max_window_layers on may slide."""
    f = Fields(hf, "qwen2", QWEN2_DEFAULTS)
    return common(f, **gqa(f), qkv_bias=True, sliding_window=qwen_window(f, lambda i, last: i >= last))


def _qwen3(hf: dict) -> ModelConfig:
    """Qwen3: Qwen2's window rule, optional bias on q/k/v/o, per-head q/k RMSNorm, head_dim 128 by default."""
    f = Fields(hf, "qwen3", QWEN3_DEFAULTS)
    bias = f.flag("attention_bias")
    return common(f, **gqa(f), qkv_bias=bias, o_bias=bias, qk_norm="head",
                   sliding_window=qwen_window(f, lambda i, last: i >= last))
