"""What `train_tiny.py` trains: four small decoders on one tokenizer, and the run settings per preset.

Three models ship in `models/` (bf16, 25 MB on disk together) and one is trained only for its score:

| name                    | class                | shape (h200 preset)                                    | role     |
|-------------------------|----------------------|--------------------------------------------------------|----------|
| `olmoe-stdlib`          | `OlmoeForCausalLM`   | D 160, 4 layers, 32 experts of width 64, top-4, MHA     | target   |
| `mixtral-stdlib`        | `MixtralForCausalLM` | D 160, 4 layers, 8 experts of width 224, top-2, GQA 8:2 | target   |
| `qwen3-stdlib-draft`    | `Qwen3ForCausalLM`   | D 128, 3 layers, SwiGLU 384, GQA 4:2, tied embeddings   | draft    |
| `dense-stdlib-baseline` | `OlmoeForCausalLM`   | olmoe-stdlib with 1 expert of width 4 x 64              | baseline |

The dense baseline has exactly olmoe-stdlib's *active* parameters (same attention, embeddings and
norms; one SwiGLU as wide as the four experts a token uses) and sees the same tokens (same steps,
batch and seed), so the held-out bits-per-byte gap between the two is what sparsity buys at equal
compute per token (the comparison of the OLMoE paper, Muennighoff et al. 2024, sec. 4.1).

Every model: vocabulary 4096 (`models/stdlib-tokenizer`), silu, RMSNorm, RoPE (theta 10^4), 2048
positions, `<|endoftext|>` = 0 as bos and eos, no pad id in the model config (a `padding_idx` would
freeze the EOT embedding at zero), head_dim 32 (power of two: minimoe's Triton attention tiles).
Only config fields that transformers 5.17 and 5.24 both define are set.

**Two choices were measured, not guessed** (H200, four processes at once, 3.11 stdlib tokens, batch
64 x 512, ~2000 steps). Held-out loss on code drops in one step when attention learns to copy from
earlier in the file (induction heads, Olsson et al. 2022): olmoe-stdlib went from 4.1 to 2.6 nats
around 15M tokens. Mixtral at lr 3e-3 never made that step (1.29 bpb); at 1e-3 it did (1.00 bpb):
likely because Mixtral has no q/k norm, which OLMoE and Qwen3 have and which keeps attention logits
tame at high learning rates (Dehghani et al. 2023, "Scaling ViT to 22B"). A two-layer draft never made
it either, at any of 1e-3 / 3e-3 / 6e-3 or with more heads (1.24-1.41 bpb); three layers made it by
step 400 (0.96 bpb). Hence mixtral's lr and the draft's third layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

COMMON = dict(vocab_size=4096, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-5,
              bos_token_id=0, eos_token_id=0, pad_token_id=None, initializer_range=0.02,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

# name -> (transformers class, shipped in models/, config fields per preset)
MODELS = {
    "olmoe-stdlib": ("OlmoeForCausalLM", True, {
        "h200": dict(hidden_size=160, num_hidden_layers=4, num_attention_heads=5, num_key_value_heads=5,
                     intermediate_size=64, num_experts=32, num_experts_per_tok=4),
        "cpu": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                    intermediate_size=32, num_experts=8, num_experts_per_tok=2)}),
    "mixtral-stdlib": ("MixtralForCausalLM", True, {
        "h200": dict(hidden_size=160, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                     head_dim=32, intermediate_size=224, num_local_experts=8, num_experts_per_tok=2),
        "cpu": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    head_dim=32, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)}),
    "qwen3-stdlib-draft": ("Qwen3ForCausalLM", True, {
        "h200": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=32, intermediate_size=384),
        "cpu": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    head_dim=32, intermediate_size=128)}),
}
# the baseline: olmoe's config with the routed experts folded into one dense SwiGLU of the active width
MODELS["dense-stdlib-baseline"] = ("OlmoeForCausalLM", False, {
    preset: {**fields, "num_experts": 1, "num_experts_per_tok": 1,
             "intermediate_size": fields["intermediate_size"] * fields["num_experts_per_tok"]}
    for preset, fields in MODELS["olmoe-stdlib"][2].items()})
FAMILY_FIXED = {   # per class: the family's own defaults we pin, so the checkpoint says what it is
    "OlmoeForCausalLM": dict(norm_topk_prob=False, router_aux_loss_coef=0.01, tie_word_embeddings=False),
    "MixtralForCausalLM": dict(router_aux_loss_coef=0.01, sliding_window=None, tie_word_embeddings=False),
    "Qwen3ForCausalLM": dict(use_sliding_window=False, sliding_window=None, tie_word_embeddings=True),
}
SHORT = {"olmoe": "olmoe-stdlib", "mixtral": "mixtral-stdlib", "draft": "qwen3-stdlib-draft",
         "dense": "dense-stdlib-baseline"}


@dataclass
class Preset:
    """Run settings of a preset; train_tiny.py's flags override the main ones (steps, lr, batch ...)."""
    seq_len: int                    # training window; evaluation uses the same, stride seq_len // 2
    batch: int                      # sequences per step (tiny models are launch-bound: go wide)
    steps: dict = field(default_factory=dict)   # model -> optimizer steps (the cosine's length)
    time_budget_s: float = 240.0    # per model; the schedule anneals by time if it runs out first
    lr: dict = field(default_factory=dict)      # model -> peak AdamW learning rate
    min_lr_ratio: float = 0.1       # cosine floor, as a share of the peak
    warmup: int = 50                # linear warmup steps
    weight_decay: float = 0.1       # on matrices (embeddings and stacked experts too), not on norms
    clip: float = 1.0               # global gradient-norm clip
    eval_every: int = 100           # steps between held-out losses for the curve (on eval_tokens)
    eval_tokens: int = 16384        # prefix of the held-out ids the periodic eval scores
    eval_batch: int = 64            # windows per forward when scoring
    save_every_s: float = 60.0      # state checkpoint period (resumable runs)
    corpus_bytes: int | None = None  # cap on the train text (hash-ordered subset); None = all
    precision: str = "bf16"         # fp32 | autocast (fp32 weights, bf16 matmuls) | bf16 (+fp32 master)
    experts: str = "grouped_mm"     # transformers' experts_implementation for the MoE classes
    log_every: int = 10             # steps between train-loss reads (each one a host sync)
    seed: int = 0                   # init and batch order
    steps_total: int = 0            # this model's entry of `steps`, filled in by for_model()
    stop_step: int | None = None    # stop (and save) here without changing the schedule

    def for_model(self, name: str) -> "Preset":
        return replace(self, steps_total=self.steps[name], lr=self.lr[name])


LR = {name: 3e-3 for name in MODELS}
LR["mixtral-stdlib"] = 1e-3      # no q/k norm: at 3e-3 its attention never learned to copy (see above)

PRESETS = {
    # one H200 shared by four concurrent processes: ~11 steps/s for the MoE models, ~35 for the draft,
    # so 2400 steps (79M tokens, 8.6 epochs of the 3.11 stdlib) end in ~3.5 minutes, inside the budget
    "h200": Preset(seq_len=512, batch=64, steps={name: 2400 for name in MODELS}, lr=LR),
    # this CPU, one thread, about 15 s a model: checks the whole pipeline, learns little
    "cpu": Preset(seq_len=256, batch=4, steps={name: 30 for name in MODELS}, lr=LR, time_budget_s=60,
                  warmup=5, eval_every=10, eval_tokens=2048, eval_batch=16, corpus_bytes=3_000_000,
                  precision="fp32", experts="eager"),
}


def model_config(name: str, preset: str, overrides: dict | None = None):
    """The transformers config of model `name` at `preset` size (`overrides` for tests)."""
    import transformers
    cls_name, _, sizes = MODELS[name]
    config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    config = config_cls(**{**COMMON, **FAMILY_FIXED[cls_name], **sizes[preset], **(overrides or {})})
    config._name_or_path = f"minimoe/{name}"
    return config


def build_model(name: str, preset: str, experts: str = "eager", overrides: dict | None = None,
                seed: int = 0):
    """Fresh seeded model with sdpa attention; expert layers (the 1-expert baseline's too) run `experts`
    ("eager": transformers' loop over experts, "grouped_mm": one grouped GEMM; the config then says
    which one transformers actually picked)."""
    import transformers
    config = model_config(name, preset, overrides)
    torch.manual_seed(seed)
    kwargs = {"experts_implementation": experts} if has_experts(config) else {}
    model = getattr(transformers, MODELS[name][0])._from_config(config, attn_implementation="sdpa", **kwargs)
    return model


def has_experts(config) -> bool:
    return hasattr(config, "num_experts_per_tok")


def is_moe(config) -> bool:
    return (getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None) or 0) > 1


def param_counts(model) -> dict:
    """total, active (what one token runs through: top-k of E experts) and embedding parameters."""
    cfg = model.config
    n_exp = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None) or 1
    k = getattr(cfg, "num_experts_per_tok", 1)
    total = active = embed = 0
    for name, p in model.named_parameters():     # tied weights appear once here
        total += p.numel()
        active += p.numel() * k // n_exp if ".experts." in name else p.numel()
        if "embed_tokens" in name or "lm_head" in name:
            embed += p.numel()
    return dict(total=total, active=active, embedding=embed, bf16_bytes=2 * total)
