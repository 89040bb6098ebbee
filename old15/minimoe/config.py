"""Architecture configuration: one dataclass for every family minimoe runs.

A Hugging Face `config.json` names the same idea differently in each family (`num_experts`,
`num_local_experts`, `n_routed_experts` ...) and hides quirks in defaults. `families.py` translates
each family's dict into this one `ModelConfig`, where every quirk is a named field with a comment
saying why it exists. Nothing downstream looks at `model_type` again: the model is wired from these
fields alone, so a new family is a new translation, not a new `if` in `forward`.

Shape legend used across the package (declared once, used in comments and einsums):
    B batch, S sequence, T tokens (= B*S flattened), D hidden, H / Hkv query / key-value heads,
    E experts, K experts per token, I expert FFN width, V vocab.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    family: str                     # key into families.FAMILIES (the HF model_type)
    vocab_size: int                 # V
    hidden_size: int                # D
    n_layers: int
    n_heads: int                    # H
    n_kv_heads: int                 # Hkv (< H means grouped-query attention)
    head_dim: int                   # explicit: Qwen3's H*head_dim != D, never infer it
    intermediate_size: int          # dense SwiGLU width (dense layers, DeepSeek's first layers)
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False

    # --- attention quirks ---
    attention: str = "gqa"          # "gqa" or "mla" (DeepSeek-V2/V3 latent attention)
    qkv_bias: bool = False          # Qwen1.5/2-MoE carry biases on q/k/v (not on o)
    o_bias: bool = False            # `attention_bias` families put a bias on o_proj too
    qk_norm: str | None = None      # None | "full" (OLMoE: RMSNorm over the whole projection) | "head" (Qwen3: per head)
    clip_qkv: float | None = None   # OLMoE/OLMo option: clamp q, k, v to [-c, c]
    sliding_window: int | None = None  # refuse contexts longer than this (we do not implement windows)

    # --- rotary embedding ---
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"type": "yarn", "factor", "original_max_position_embeddings", ...}
    rope_interleave: bool = False   # DeepSeek rotates interleaved pairs (x0,x1),(x2,x3); others rotate halves

    # --- MLA (DeepSeek-V2/V3) ---
    q_lora_rank: int | None = None  # None: q = q_proj(x); else q = q_b(norm(q_a(x)))  (V3)
    kv_lora_rank: int = 0           # the cached latent width
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    # --- mixture of experts ---
    n_experts: int = 0              # E routed experts; 0 = dense model
    top_k: int = 0                  # K
    moe_intermediate_size: int = 0  # I
    dense_layers: tuple = ()        # layer indices with a dense FFN instead of an MoE block
    router: str = "softmax_topk"    # key into router.ROUTERS
    norm_topk_prob: bool = False    # renormalise the K weights to sum to 1
    routed_scaling_factor: float = 1.0  # DeepSeek multiplies routed weights by this
    n_group: int = 1                # DeepSeek group-limited routing: groups of experts ...
    topk_group: int = 1             # ... of which this many may be chosen
    router_bias: bool = False       # DeepSeek-V3 e_score_correction_bias (selection only)
    router_fp32: bool = False       # DeepSeek keeps the gate weight and its matmul in fp32
    shared_intermediate_size: int = 0  # width of the always-on shared expert MLP (0 = none)
    shared_expert_gate: bool = False   # Qwen2-MoE scales the shared expert by sigmoid(gate(x))
    # Pruned checkpoints: a layer's routed-expert count and width come from its tensors (loader.py reads
    # them from the checkpoint) and may differ per layer; None = n_experts / moe_intermediate_size everywhere.
    experts_per_layer: tuple | None = None
    moe_width_per_layer: tuple | None = None

    bos_token_id: int | None = None
    eos_token_ids: tuple = ()       # every stop id: config.json's eos_token_id (int or list) + generation_config.json's
    extra: dict = field(default_factory=dict)  # informative leftovers (name, source), never read by the model

    # ---- derived quantities ------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def is_moe_layer(self, i: int) -> bool:
        return self.is_moe and i not in self.dense_layers

    def layer_experts(self, i: int) -> int:
        """Routed experts of MoE layer i (E may differ per layer in a pruned checkpoint)."""
        return self.experts_per_layer[i] if self.experts_per_layer else self.n_experts

    def layer_moe_width(self, i: int) -> int:
        """Expert FFN width I of MoE layer i."""
        return self.moe_width_per_layer[i] if self.moe_width_per_layer else self.moe_intermediate_size

    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head: MLA concatenates its no-rope and rope parts."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def rope_dim(self) -> int:
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(head dim), times DeepSeek's YaRN mscale^2 as the original DeepSeek code computes it."""
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling or {}
        if rs.get("type") == "yarn" and rs.get("mscale_all_dim"):
            m = yarn_mscale(rs["factor"], rs["mscale_all_dim"])
            scale *= m * m
        return scale

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Cache bytes one token adds per layer: MLA stores the latent, GQA stores K and V."""
        if self.attention == "mla":
            return (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        return 2 * self.n_kv_heads * self.head_dim * dtype_bytes

    def with_top_k(self, k: int) -> "ModelConfig":
        """The paper's top-k sweeps: route each token to k experts instead of the card's default."""
        if not self.is_moe:
            raise ValueError("--topk needs an MoE model")
        fewest = min((self.layer_experts(i) for i in range(self.n_layers) if self.is_moe_layer(i)),
                     default=self.n_experts)
        if not 1 <= k <= fewest:
            raise ValueError(f"--topk {k} must be between 1 and the expert count {fewest}")
        if self.n_group > 1 and k > self.topk_group * (self.n_experts // self.n_group):
            raise ValueError(f"--topk {k} exceeds the experts in the {self.topk_group} allowed groups")
        return dataclasses.replace(self, top_k=k)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention-temperature correction (DeepSeek's `yarn_get_mscale`)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
