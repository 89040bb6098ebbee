"""Reading config.json fields: each with its family's default, its type checked, its errors naming it.

A key that config.json leaves out means what the family's reference config class says, so every
family translation (families.py) reads through a table of those defaults kept beside it:
transformers' `<Family>Config` (5.17 and 5.24 agree on every value listed), or for `deepseek`, which
transformers lacks, the remote code's `configuration_deepseek.py` (DeepseekConfig). Four sizes have no
default on purpose: vocab_size, hidden_size, num_hidden_layers and num_attention_heads fix the model's
shape, and a config.json without one describes no checkpoint (transformers would build its full-size
reference model, then find every tensor mis-shaped). tests/test_config_defaults.py derives every
default from the transformers classes, so a drift there fails a test here.

The rope settings (old `rope_theta` + `rope_scaling`, or new `rope_parameters`) are read here too,
with YaRN's missing fields filled the way transformers fills them.
"""
from __future__ import annotations

from .config import ModelConfig, yarn_mscale


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it stands (checkpoint.py, loader.py, prequant*.py): one sentence."""


class ConfigError(ValueError):
    """config.json holds a value minimoe cannot use; the message names the field."""


class UnsupportedConfig(ConfigError, NotImplementedError):
    """config.json asks for something minimoe does not implement (either base class catches it)."""


def number(v, field: str, positive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0):
        raise ConfigError(f"config.json field {field!r} must be a {'positive ' if positive else ''}number, got {v!r}")
    return float(v)


class Fields:
    """A config.json read through its family's defaults. Each value is checked as it is read, so a
    malformed one is a one-line error naming the field, not a traceback deep in the model."""

    def __init__(self, hf: dict, family: str, defaults: dict):
        self.hf, self.family, self.defaults = hf, family, defaults

    def raw(self, key: str, *aliases: str):
        """config.json's value for `key` (or for another name transformers maps to it), else the default."""
        for name in (key, *aliases):
            if name in self.hf:
                return self.hf[name]
        if key not in self.defaults:
            raise ConfigError(f"config.json for model_type {self.family!r} lacks the field {key!r}")
        return self.defaults[key]

    def integer(self, key: str, *aliases: str, low: int = 0, null: bool = False) -> int | None:
        v = self.raw(key, *aliases)
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            what = f"an integer >= {low}" + (" or null" if null else "")
            raise ConfigError(f"config.json field {key!r} must be {what}, got {v!r}")
        return v

    def number(self, key: str, null: bool = False) -> float | None:
        v = self.raw(key)
        return None if v is None and null else number(v, key)

    def flag(self, key: str) -> bool:
        """true or false; null reads as false, as transformers' `if config.<key>:` does."""
        v = self.raw(key)
        if v is not None and not isinstance(v, bool):
            raise ConfigError(f"config.json field {key!r} must be true or false, got {v!r}")
        return bool(v)

    def ids(self, key: str) -> tuple:
        """Non-negative integers (layer indices, token ids): a list, one integer, or null for none."""
        v = self.raw(key)
        ids = [] if v is None else v if isinstance(v, list) else [v]
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ConfigError(f"config.json field {key!r} must be a list of non-negative integers, got {v!r}")
        return tuple(ids)

    def choice(self, key: str, supported: tuple) -> str:
        v = self.raw(key)
        if v not in supported:
            raise UnsupportedConfig(f"{key} {v!r} is not supported for {self.family} "
                                    f"(supported: {', '.join(supported)})")
        return v


def read_rope(f: Fields, kinds: tuple, softmax_mscale: bool) -> tuple[float, dict | None]:
    """(theta, YaRN settings or None), read as transformers 5 reads them: a legacy `rope_scaling`
    replaces `rope_parameters` outright, and theta comes from that dict, else from a top-level
    `rope_theta`, else the class default (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`)."""
    key = "rope_scaling" if f.hf.get("rope_scaling") else "rope_parameters"
    params = f.hf.get(key) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config.json field {key!r} must be an object, got {params!r}")
    theta = number(params.get("rope_theta", f.raw("rope_theta")), f"{key}.rope_theta")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in kinds:
        raise UnsupportedConfig(f"rope scaling type {kind!r} is not supported for {f.family} "
                                f"({key}.rope_type; supported: {', '.join(kinds)})")
    return theta, (read_yarn(f, key, params, softmax_mscale) if kind == "yarn" else None)


def read_yarn(f: Fields, key: str, p: dict, softmax_mscale: bool) -> dict:
    """YaRN settings with every gap filled as transformers fills it: `original_max_position_embeddings`
    is `max_position_embeddings` (`standardize_rope_params`); a null `factor` is their ratio, beta_fast /
    beta_slow are 32 / 1, `truncate` is true, and the cos/sin amplitude `attention_factor` follows from
    mscale / mscale_all_dim (`_compute_yarn_parameters`). `mscale_all_dim` is kept only where the
    family's attention also multiplies its softmax scale by mscale^2 (DeepSeek-V2/V3), because
    `ModelConfig.softmax_scale` applies it whenever it is there."""
    if "factor" not in p:
        raise ConfigError(f"config.json field '{key}.factor' is required for yarn rope scaling")
    max_pos = f.integer("max_position_embeddings", low=1)
    orig = p.get("original_max_position_embeddings") or max_pos
    if isinstance(orig, bool) or not isinstance(orig, int) or orig < 1:
        raise ConfigError(f"config.json field '{key}.original_max_position_embeddings' must be a positive "
                          f"integer, got {orig!r}")
    factor = number(max_pos / orig if p["factor"] is None else p["factor"], f"{key}.factor")

    def optional(name):                                     # a number, or null / absent
        return None if p.get(name) is None else number(p[name], f"{key}.{name}", positive=False)

    m, m_all, amp = optional("mscale"), optional("mscale_all_dim"), optional("attention_factor")
    if amp is None:
        amp = yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all else yarn_mscale(factor)
    rs = dict(type="yarn", factor=factor, original_max_position_embeddings=orig, attention_factor=amp,
              beta_fast=number(p.get("beta_fast") or 32, f"{key}.beta_fast", positive=False),
              beta_slow=number(p.get("beta_slow") or 1, f"{key}.beta_slow", positive=False),
              truncate=bool(p.get("truncate", True)))
    if softmax_mscale and m_all:
        rs["mscale_all_dim"] = m_all
    return rs


# ---- the fields every family reads -------------------------------------------------------------

def gqa(f: Fields, head_dim_key: bool = True) -> dict:
    """Grouped-query attention geometry. A null num_key_value_heads means one per query head; a
    missing or null head_dim means hidden_size / num_attention_heads."""
    n_heads = f.integer("num_attention_heads", low=1)    # read first: a config without it is refused by this name
    hidden = f.integer("hidden_size", low=1)
    kv = f.integer("num_key_value_heads", low=1, null=True) or n_heads
    if n_heads % kv:
        raise ConfigError(f"num_attention_heads ({n_heads}) must be a multiple of num_key_value_heads ({kv})")
    head_dim = f.integer("head_dim", low=1, null=True) if head_dim_key else None
    if head_dim is None:
        if hidden % n_heads:
            raise ConfigError(f"head_dim is missing and hidden_size ({hidden}) is not a multiple of "
                              f"num_attention_heads ({n_heads})")
        head_dim = hidden // n_heads
    if head_dim % 2:
        raise ConfigError(f"head_dim ({head_dim}) must be even: rotary embedding turns channel pairs")
    return dict(n_kv_heads=kv, head_dim=head_dim)


def experts(f: Fields, key: str, *aliases: str) -> dict:
    """E routed experts (null or 0: none, a dense model) and K experts per token, 1 <= K <= E."""
    n = f.integer(key, *aliases, null=True) or 0
    k = f.integer("num_experts_per_tok", null=True) if n else 0
    if n and not (k and k <= n):
        raise ConfigError(f"num_experts_per_tok ({k}) must be between 1 and {key} ({n})")
    return dict(n_experts=n, top_k=k)


def common(f: Fields, rope_kinds: tuple = ("default", "yarn"), softmax_mscale: bool = False,
            **kw) -> ModelConfig:
    """The fields every family shares; `kw` brings the family's attention geometry and quirks."""
    theta, scaling = read_rope(f, rope_kinds, softmax_mscale)
    base = dict(
        family=f.family,
        vocab_size=f.integer("vocab_size", low=1),
        hidden_size=f.integer("hidden_size", low=1),
        n_layers=f.integer("num_hidden_layers", low=1),
        n_heads=f.integer("num_attention_heads", low=1),
        intermediate_size=f.integer("intermediate_size"),
        rms_norm_eps=f.number("rms_norm_eps"),
        max_position_embeddings=f.integer("max_position_embeddings", low=1),
        tie_word_embeddings=f.flag("tie_word_embeddings"),
        rope_theta=theta,
        rope_scaling=scaling,
        bos_token_id=f.integer("bos_token_id", null=True),
        eos_token_ids=f.ids("eos_token_id"),
        extra={"name": f.hf.get("_name_or_path", "")},
    )
    base.update(kw)
    return ModelConfig(**base)


# Defaults tables: the reference class's value for every key its translation reads. A key's value of
# None means what the class makes of None: num_key_value_heads = num_attention_heads, head_dim =
# hidden_size / num_attention_heads, no sliding window, no clipping, no such token.


def qwen_window(f: Fields, slides) -> int | None:
    """Qwen2's sliding window, if `use_sliding_window` is on and some layer slides: the ones `layer_types`
    marks, or when it is absent those the family's rule `slides(layer, max_window_layers)` picks.
    minimoe has no windowed attention, so the window caps the context instead."""
    if not f.flag("use_sliding_window"):
        return None
    types = f.raw("layer_types")
    if types is None:
        last = f.integer("max_window_layers")
        types = ["sliding_attention" if slides(i, last) else "full_attention"
                 for i in range(f.integer("num_hidden_layers", low=1))]
    if not isinstance(types, list):
        raise ConfigError(f"config.json field 'layer_types' must be a list, got {types!r}")
    return f.integer("sliding_window", low=1, null=True) if "sliding_attention" in types else None
