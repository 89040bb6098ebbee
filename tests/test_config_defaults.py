"""Guards config.json translation (issue 10): a key left out means what the family's transformers config class says, and a malformed value is one clear error naming the field, never a KeyError/TypeError traceback."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import COMMON, FAMILIES, TINY_HF, VOCAB, randomize, rel_err

transformers = pytest.importorskip("transformers")
from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: E402

from minimoe.families import ConfigError, config_from_hf  # noqa: E402
from minimoe.generate import Generator  # noqa: E402
from minimoe.loader import build_model  # noqa: E402

TOL = 1e-4                      # float32 on both sides, as in test_parity
PROMPT = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(10))
# No default on purpose (families.py says why): left out, they are refused by name.
REQUIRED = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"}

# The dense decoders, test_dense_families' shapes with one quirk each; 3 layers, from conftest.COMMON.
DENSE = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(attention_bias=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24, tie_word_embeddings=True)),
}
DENSE_SIZES = dict(intermediate_size=96, num_key_value_heads=2)

# DeepSeekMoE (`deepseek`) has no transformers class: its reference is the remote code's
# configuration_deepseek.py (DeepseekConfig.__init__ defaults, deepseek-ai/deepseek-moe-16b-base).
DEEPSEEK_REMOTE = dict(intermediate_size=11008, moe_intermediate_size=1407, num_key_value_heads=32,
                       n_shared_experts=None, n_routed_experts=None, num_experts_per_tok=None, moe_layer_freq=1,
                       first_k_dense_replace=0, norm_topk_prob=False, scoring_func="softmax", hidden_act="silu",
                       max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=100000, eos_token_id=100001,
                       tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, attention_bias=False)
DEEPSEEK_TINY = dict(model_type="deepseek", vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=80, moe_intermediate_size=24, n_routed_experts=8,
                     num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1, moe_layer_freq=1,
                     norm_topk_prob=True, scoring_func="softmax", max_position_embeddings=512, rms_norm_eps=1e-5,
                     rope_theta=5e5, rope_scaling=None, attention_bias=False, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=1)


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    """Deleting keys makes transformers warn about every default it fills in."""
    before = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(before)


# ---- helpers -----------------------------------------------------------------------------------


class Recorder(dict):
    """A config dict that notes, as dotted paths, every key the translation looks at (nested dicts too);
    iterating or copying counts as reading every key."""

    def __init__(self, data: dict, seen: set, prefix: str = ""):
        super().__init__({k: Recorder(v, seen, f"{prefix}{k}.") if isinstance(v, dict) else v
                          for k, v in data.items()})
        self.seen, self.prefix = seen, prefix

    def _note(self, *keys):
        self.seen.update(f"{self.prefix}{k}" for k in keys)

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

    def __iter__(self):
        self._note(*super().keys())
        return super().__iter__()

    def keys(self):
        self._note(*super().keys())
        return super().keys()

    def items(self):
        self._note(*super().keys())
        return super().items()


MISSING = object()


def lookup(config: dict, path: str):
    head, _, sub = path.partition(".")
    value = config.get(head, MISSING)
    if sub:
        return value.get(sub, MISSING) if isinstance(value, dict) else MISSING
    return value


def read_paths(config: dict) -> list[str]:
    """The keys of `config` (dotted for nested ones) that the translation reads."""
    seen: set = set()
    config_from_hf(Recorder(config, seen))
    return sorted(p for p in seen if lookup(config, p) is not MISSING)


def replaced(config: dict, path: str, value=MISSING) -> dict:
    """A deep copy of `config` with `path` deleted, or set to `value`."""
    out = copy.deepcopy(config)
    head, _, sub = path.partition(".")
    where, key = (out[head], sub) if sub else (out, head)
    if value is MISSING:
        del where[key]
    else:
        where[key] = value
    return out


def translate(config: dict):
    """config_from_hf's answer: the ModelConfig, or the clean error it raised."""
    try:
        return config_from_hf(config)
    except (ValueError, MemoryError) as e:
        return e


def same(a, b) -> bool:
    """Two translate() answers agree: equal configs, or errors of one type."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b)
    return a == b


def differences(ours, want) -> str:
    if isinstance(ours, Exception) or isinstance(want, Exception):
        return f"left out -> {ours!r}, set -> {want!r}"
    return str({k: (v, getattr(want, k)) for k, v in vars(ours).items() if v != getattr(want, k)})


def minimoe_prefill(net, ids: torch.Tensor) -> torch.Tensor:
    """minimoe's prefill logits [B, S, V], the way test_parity computes them."""
    gen = Generator(net, ids.shape[0], ids.shape[1] + 1)
    with torch.inference_mode():
        return net(ids, gen.cache.step(ids.shape[1], 0), gen.cache)


def hf_prefill(folder):
    """transformers' prefill logits, or None where it refuses the folder: an error while loading or
    running, or weights it had to initialise, drop or reshape."""
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                          output_loading_info=True)
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
            return None
        with torch.no_grad():
            return model(PROMPT).logits
    except Exception:
        return None


def minimoe_outcome(folder):
    """minimoe's prefill logits, or the error building the model raised (a clean one is a ValueError or
    MemoryError; anything else is returned too, so the test can name it)."""
    try:
        net, _, _ = build_model(str(folder), "auto", dtype=torch.float32)
        return minimoe_prefill(net, PROMPT)
    except Exception as e:
        return e


def with_config(src, config: dict, dst):
    """A copy of checkpoint folder `src` (weights linked, not copied) whose config.json is `config`."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "config.json":
            (dst / item.name).symlink_to(item.resolve())
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def save_dense(family: str, folder):
    config_cls, model_cls, extra = DENSE[family]
    config = getattr(transformers, config_cls)(**COMMON, **DENSE_SIZES, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).float().eval()
    randomize(model, seed=0)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoint(hf_checkpoint, tmp_path_factory):
    """family -> folder of its tiny saved checkpoint (conftest's MoE ones, DENSE's here)."""
    made = {}

    def get(family: str):
        if family in TINY_HF:
            return hf_checkpoint(family)[0]
        if family not in made:
            made[family] = tmp_path_factory.mktemp(f"dense-{family}")
            save_dense(family, made[family])
        return made[family]
    return get


def transformers_value(config: dict, path: str):
    """What transformers' config class makes of `path` once config.json leaves it out (MISSING where
    it builds no config or has no such attribute)."""
    try:
        trimmed = replaced(config, path)
        resolved = CONFIG_MAPPING[trimmed["model_type"]].from_dict(trimmed)      # as from_pretrained does
    except Exception:
        return MISSING
    head, _, sub = path.partition(".")
    value = getattr(resolved, head, MISSING)
    if sub:
        return value.get(sub, MISSING) if isinstance(value, dict) else MISSING
    return value


# ---- a key left out ----------------------------------------------------------------------------

ALL = FAMILIES + tuple(DENSE)


@pytest.mark.parametrize("family", ALL)
def test_left_out_key_takes_the_transformers_default(family, checkpoint):
    """For every key the translation reads: translating config.json without it gives what translating
    it with transformers' resolved value gives (e.g. Qwen3-MoE's norm_topk_prob is False when absent)."""
    config = json.loads((checkpoint(family) / "config.json").read_text())
    paths = read_paths(config)
    assert len(paths) >= 12, paths                                  # the recorder sees the reads
    problems = []
    for path in paths:
        ours = translate(replaced(config, path))
        if path in REQUIRED:
            if not (isinstance(ours, ConfigError) and f"lacks the field '{path}'" in str(ours)):
                problems.append(f"{path}: left out, it must be refused by name; got {ours!r}")
            continue
        value = transformers_value(config, path)
        if path in ("model_type", "_name_or_path") or value is MISSING:
            continue                                                # nothing to compare against
        want = translate(replaced(config, path, value))
        if not same(ours, want):
            problems.append(f"{path}: transformers' default {value!r} is not minimoe's: {differences(ours, want)}")
    assert not problems, f"{family}:\n" + "\n".join(problems)


@pytest.mark.parametrize("family", ALL)
def test_left_out_key_runs_as_transformers_does(family, checkpoint, tmp_path):
    """For every key the translation reads, a copy of the tiny checkpoint without it: where transformers
    loads it cleanly, minimoe gives the same prefill logits; where transformers refuses (an error, or
    weights it must initialise, drop or reshape), minimoe refuses with a clean error, or runs the
    checkpoint exactly as saved (the loader reads expert shapes from the tensors)."""
    folder = checkpoint(family)
    config = json.loads((folder / "config.json").read_text())
    as_saved = hf_prefill(folder)
    problems = []
    for path in read_paths(config):
        trimmed = replaced(config, path)
        if path in REQUIRED:
            continue                                                # refused by name: the test above
        if transformers_value(config, path) == lookup(config, path):
            # transformers reads the gap as the saved value, so it would rerun test_parity's model
            if not same(translate(trimmed), translate(config)):
                problems.append(f"{path}: transformers' default is the saved value, minimoe's is not")
            continue
        copy_dir = with_config(folder, trimmed, tmp_path / path)
        ref, ours = hf_prefill(copy_dir), minimoe_outcome(copy_dir)
        if ref is None:
            # minimoe's loader takes expert counts and widths from the checkpoint's tensors, so where
            # transformers refuses it may also run the checkpoint, but then exactly as saved
            if isinstance(ours, torch.Tensor) and rel_err(ours, as_saved) > TOL:
                problems.append(f"{path}: transformers refuses the checkpoint, minimoe runs another model")
            elif not isinstance(ours, (torch.Tensor, ValueError, MemoryError)):
                problems.append(f"{path}: transformers refuses the checkpoint, minimoe raises {ours!r}")
        elif not isinstance(ours, torch.Tensor):
            problems.append(f"{path}: transformers runs the checkpoint, minimoe raises {ours!r}")
        elif rel_err(ours, ref) > TOL:
            problems.append(f"{path}: prefill logits differ, rel. err {rel_err(ours, ref):.2e}")
    assert not problems, f"{family}:\n" + "\n".join(problems)


def test_deepseek_moe_defaults_follow_its_remote_code():
    """`deepseek` (no transformers class): each key left out translates as DeepseekConfig's default."""
    paths = read_paths(DEEPSEEK_TINY)
    assert {"n_shared_experts", "first_k_dense_replace", "moe_layer_freq", "scoring_func"} <= set(paths)
    problems = []
    for path in paths:
        ours = translate(replaced(DEEPSEEK_TINY, path))
        if path in REQUIRED or path == "model_type":
            assert isinstance(ours, ValueError), path
            continue
        if path not in DEEPSEEK_REMOTE:
            problems.append(f"{path}: read by the translation but not in DEEPSEEK_REMOTE; add its default")
        elif not same(ours, translate(replaced(DEEPSEEK_TINY, path, DEEPSEEK_REMOTE[path]))):
            problems.append(f"{path}: left out, it does not translate as DeepseekConfig's {DEEPSEEK_REMOTE[path]!r}")
    assert not problems, "\n".join(problems)


def test_deepseek_moe_without_experts_is_dense():
    """DeepseekConfig leaves n_routed_experts None: every layer a dense MLP, no shared experts."""
    cfg = config_from_hf(dict(model_type="deepseek", vocab_size=100, hidden_size=256, num_hidden_layers=2,
                              num_attention_heads=32))
    assert (cfg.n_experts, cfg.shared_intermediate_size, cfg.n_kv_heads, cfg.intermediate_size) == (0, 0, 32, 11008)
    assert not cfg.is_moe_layer(0) and cfg.eos_token_ids == (100001,) and cfg.max_position_embeddings == 2048


# ---- YaRN with gaps ----------------------------------------------------------------------------

YARN_GAPS = {
    # the example: transformers fills original_max_position_embeddings from max_position_embeddings
    "qwen3_moe": {"rope_type": "yarn", "factor": 4.0},
    "deepseek_v3": {"rope_type": "yarn", "factor": 4.0},
    # mscale_all_dim scales the softmax only in DeepSeek's attention; elsewhere it only sets the amplitude
    "olmoe": {"type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": None},
    "deepseek_v2": {"type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0},
}


@pytest.mark.parametrize("family", sorted(YARN_GAPS))
def test_yarn_with_left_out_fields_matches_transformers(family, checkpoint, tmp_path):
    folder = checkpoint(family)
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters")
    config.update(rope_theta=10000.0, rope_scaling=YARN_GAPS[family])           # the legacy form
    copy_dir = with_config(folder, config, tmp_path / "yarn")
    ref = hf_prefill(copy_dir)
    assert ref is not None, "transformers accepts this config"
    net, cfg, _ = build_model(str(copy_dir), "auto", dtype=torch.float32)
    assert cfg.rope_scaling["original_max_position_embeddings"] == config["max_position_embeddings"]
    assert rel_err(minimoe_prefill(net, PROMPT), ref) <= TOL


# ---- malformed values --------------------------------------------------------------------------


def tiny_config(family: str) -> dict:
    if family == "deepseek":
        return dict(DEEPSEEK_TINY)
    if family in TINY_HF:
        config_cls, _, kwargs = TINY_HF[family]
        return getattr(transformers, config_cls)(**COMMON, **kwargs).to_dict()
    config_cls, _, extra = DENSE[family]
    return getattr(transformers, config_cls)(**COMMON, **DENSE_SIZES, **extra).to_dict()


MALFORMED = [   # (family, change to its tiny config, the field the one-line error must name)
    ("qwen3_moe", {"num_hidden_layers": "3"}, "num_hidden_layers"),
    ("olmoe", {"num_experts": -1}, "num_experts"),
    ("mixtral", {"num_experts_per_tok": 6}, "num_experts_per_tok"),             # top-6 of 5 experts
    ("deepseek_v2", {"num_experts_per_tok": None}, "num_experts_per_tok"),
    ("deepseek_v3", {"n_group": 3}, "n_group"),                                 # 8 experts, 3 groups
    ("deepseek_v3", {"n_group": 8}, "n_group"),                                 # groups of 1: no top-2 sum
    ("deepseek_v2", {"n_group": None}, "n_group"),                              # group-limited without groups
    ("deepseek_v2", {"topk_group": 5}, "topk_group"),
    ("mixtral", {"hidden_size": 66}, "head_dim"),                               # 66 / 4 heads, no head_dim
    ("qwen3", {"head_dim": 23}, "head_dim"),
    ("deepseek_v3", {"qk_rope_head_dim": 7}, "qk_rope_head_dim"),
    ("mixtral", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("qwen3_moe", {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type"),
    ("llama", {"rope_parameters": {"rope_type": "ntk-by-parts", "factor": 2.0}}, "rope_type"),
    ("deepseek", {"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_type"),   # its code knows no YaRN
    ("deepseek_v2", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "factor"),
    ("qwen3_moe", {"rope_parameters": "yarn"}, "rope_parameters"),
    ("deepseek_v2", {"topk_method": "noaux"}, "topk_method"),
    ("deepseek_v3", {"topk_method": "greedy"}, "topk_method"),
    ("deepseek", {"scoring_func": "tanh"}, "scoring_func"),
    ("deepseek_v3", {"scoring_func": "softmax"}, "scoring_func"),
    ("qwen2_moe", {"decoder_sparse_step": 0}, "decoder_sparse_step"),
    ("qwen2_moe", {"mlp_only_layers": "1"}, "mlp_only_layers"),
    ("olmoe", {"norm_topk_prob": "yes"}, "norm_topk_prob"),
    ("olmoe", {"rms_norm_eps": -1e-5}, "rms_norm_eps"),
    ("llama", {"eos_token_id": "2"}, "eos_token_id"),
    ("deepseek_v2", {"mlp_bias": True}, "mlp_bias"),
    ("olmoe", {"hidden_act": "gelu"}, "hidden_act"),
]


@pytest.mark.parametrize("family,change,field", MALFORMED)
def test_malformed_value_is_one_clear_error_naming_the_field(family, change, field):
    with pytest.raises(ValueError) as e:
        config_from_hf({**tiny_config(family), **change})
    message = str(e.value)
    assert field in message and "\n" not in message, message
