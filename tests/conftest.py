"""Shared fixtures: tiny seeded `transformers` checkpoints (one per family) saved with save_pretrained.

Each tiny config is chosen to exercise one or more family quirks (listed beside it), so the parity,
loader and CLI tests together cover: an odd expert count with top-3, GQA, norm_topk_prob on and off,
shared experts (Qwen2-MoE's sigmoid-gated one and DeepSeek's), tied and untied embeddings, dense
layers (DeepSeek's first_k_dense_replace, Qwen's mlp_only_layers), OLMoE's full-projection q/k norm
with attention bias and q/k/v clipping, DeepSeek-V2's group-limited routing and YaRN, DeepSeek-V3's
q_lora_rank, groups, selection bias and routed scaling.

Weights are re-drawn after construction (matrices N(0, 1/fan_in), norm weights near 1, biases
non-zero) so every tensor matters: transformers' default init (std 0.02, norms 1, biases 0) would
leave routers nearly uniform and make a swapped norm or bias invisible.
"""
from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter (float32/float16). Set once, here, before any
# test module imports triton; a test that checks the "needs a GPU" errors removes it with monkeypatch.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: more than a few seconds on a CPU")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)

VOCAB = 128
# no special tokens: `hf.generate` must not stop early, and nothing else reads them here
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None)
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64,
            beta_fast=32, beta_slow=1)

# family -> (transformers class names, config kwargs); the comment says what each one is there for
TINY_HF = {
    # odd expert count with top-3, no renormalisation, MHA, full-width q/k norm, o/qkv bias, clip_qkv
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(intermediate_size=32, num_key_value_heads=4, num_experts=7, num_experts_per_tok=3,
                   norm_topk_prob=False, attention_bias=True, clip_qkv=2.0)),
    # GQA 4:2, tied embeddings, always-renormalised top-2 of 5
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(intermediate_size=32, num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2,
                     tie_word_embeddings=True)),
    # sigmoid-gated shared expert, q/k/v bias, GQA, no renorm, a dense middle layer (mlp_only_layers)
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                       num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, norm_topk_prob=False,
                       mlp_only_layers=[1])),
    # head_dim (24) != hidden/heads (16), per-head q/k norm, GQA, renormalised top-3 of 8
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(intermediate_size=96, moe_intermediate_size=32, num_key_value_heads=2, head_dim=24,
                       num_experts=8, num_experts_per_tok=3, norm_topk_prob=True)),
    # MLA without q_lora, group_limited_greedy (4 groups, keep 2), routed scaling, dense first layer, YaRN
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(intermediate_size=96, moe_intermediate_size=32, num_key_value_heads=4,
                         n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2, first_k_dense_replace=1,
                         kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8,
                         v_head_dim=16, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                         routed_scaling_factor=1.5, norm_topk_prob=False,
                         rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707))),
    # MLA with q_lora_rank, sigmoid + non-zero selection bias, groups, renorm, scaling 2.5, YaRN
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(intermediate_size=96, moe_intermediate_size=32, num_key_value_heads=4,
                         n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1, first_k_dense_replace=1,
                         kv_lora_rank=32, q_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                         n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                         rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=1.0))),
}
FAMILIES = tuple(TINY_HF)
TINY_CARDS = ("olmoe-tiny", "mixtral-tiny", "qwen2-moe-tiny", "qwen3-moe-tiny", "deepseek-moe-tiny",
              "deepseek-v2-lite-tiny", "deepseek-v3-tiny")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|: the parity metric used throughout (b is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def greedy_and_logits(model, prompts: torch.Tensor, steps: int):
    """Greedy tokens [B, steps] from `prompts` [B, S], and the logits [B, V] of the first decode step: what the
    tests that flip one setting on a built model compare."""
    from minimoe.generate import Generator
    gen = Generator(model, prompts.shape[0], prompts.shape[1] + steps)
    with torch.inference_mode():
        tok = gen.prefill(prompts)
        logits = model(tok[:, None], gen.cache.step(1, gen.host_len), gen.cache, select=-1)
    return gen.generate(prompts, steps), logits


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter so that each one changes the output (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise * p.shape[-1] ** -0.5)            # [.., out, in]: unit-variance outputs
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)                           # biases
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):      # DeepSeek-V3: must steer some choices
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))


def make_hf_model(family: str, seed: int = 0):
    """A tiny float32 transformers model of `family` with seeded random weights, in eval mode."""
    import transformers
    config_cls, model_cls, kwargs = TINY_HF[family]
    config = getattr(transformers, config_cls)(**COMMON, **kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    randomize(model, seed)
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """family -> (directory written by save_pretrained, the transformers model), built once per session."""
    pytest.importorskip("transformers")
    made = {}

    def get(family: str):
        if family not in made:
            model = make_hf_model(family, seed=FAMILIES.index(family))
            folder = tmp_path_factory.mktemp(f"hf-{family}")
            model.save_pretrained(folder)
            made[family] = (folder, model)
        return made[family]
    return get
