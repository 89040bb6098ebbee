"""Checkpoint names: where each minimoe tensor comes from in a Hugging Face checkpoint.

`weight_names(cfg) -> {our_name: recipe}`. A recipe is a list of alternatives; an alternative is a
list of parts; a part is a tensor name or, for stacked experts, a list of names. The loader takes the
first alternative whose tensors all exist, concatenates parts along dim 0, and stacks per-expert parts
into one [E, ...] tensor. So minimoe stores q/k/v as one `wqkv` and gate/up as one `w13` (one GEMM
each) while the Hub keeps them apart; the second alternative for experts reads transformers-v5's
in-memory fused layout. `expert_shapes` reads each MoE layer's expert count and width off the tensors.
"""
from __future__ import annotations

from .config import ModelConfig

# model_type -> (the MoE block's prefix, the names of an expert's gate / up / down projections)
LAYOUT = {
    "olmoe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek_v2": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek_v3": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}
DENSE_LAYOUT = ("mlp", ())     # llama, mistral, qwen2, qwen3


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
    E = cfg.layer_experts(i)
    names = {
        f + "router.weight": [[m + "gate.weight"], [v5 + "gate.weight"]],
        f + "experts.w13": [[[f"{m}experts.{e}.{g}.weight", f"{m}experts.{e}.{u}.weight"] for e in range(E)],
                            [v5 + "experts.gate_up_proj"]],
        f + "experts.w2": [[[f"{m}experts.{e}.{d}.weight"] for e in range(E)], [v5 + "experts.down_proj"]],
    }
    if cfg.router_bias:
        names[f + "router.bias"] = [[m + "gate.e_score_correction_bias"]]
    if cfg.shared_intermediate_size:
        hub_shared = "shared_expert." if cfg.shared_expert_gate else "shared_experts."
        names.update(_mlp_names(f + "shared.", m + hub_shared))
    if cfg.shared_expert_gate:
        names[f + "shared.gate.weight"] = [[m + "shared_expert_gate.weight"]]
    return names


def expert_shapes(cfg: ModelConfig, have: set, shape) -> dict:
    """{MoE layer: (E, I)} as the checkpoint's tensors give them: the number of experts whose
    down projection exists (0, 1, ... without a gap) and that projection's width; or the leading
    dim of transformers-v5's fused `experts.down_proj` [E, D, I]. Layers the checkpoint says
    nothing about keep the config's values (the matcher then reports what is missing)."""
    prefix, expert = LAYOUT.get(cfg.family, DENSE_LAYOUT)
    out = {}
    for i in range(cfg.n_layers):
        if not cfg.is_moe_layer(i):
            continue
        m, v5 = f"model.layers.{i}.{prefix}.", f"model.layers.{i}.mlp."
        down = expert[2]
        if v5 + "experts.down_proj" in have:
            E, _, I = shape(v5 + "experts.down_proj")
        else:
            E = 0
            while f"{m}experts.{E}.{down}.weight" in have:
                E += 1
            if E == 0:
                continue
            I = shape(f"{m}experts.0.{down}.weight")[1]
        out[i] = (E, I)
    return out


def weight_names(cfg: ModelConfig) -> dict:
    """{minimoe tensor name: recipe} for the whole model (see the module docstring)."""
    prefix, expert = LAYOUT.get(cfg.family, DENSE_LAYOUT)
    names = {"embed.weight": [["model.embed_tokens.weight"]], "norm.weight": [["model.norm.weight"]]}
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = [["lm_head.weight"]]
    for i in range(cfg.n_layers):
        names[f"layers.{i}.attn_norm.weight"] = [[f"model.layers.{i}.input_layernorm.weight"]]
        names[f"layers.{i}.ffn_norm.weight"] = [[f"model.layers.{i}.post_attention_layernorm.weight"]]
        names.update(_attn_names(cfg, i))
        if cfg.is_moe_layer(i):
            names.update(_moe_names(cfg, i, prefix, expert))
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
