"""The command line's words for RunSettings: one flag per field, its help text, and the named choices of the
fields whose values are words (`settings.add_args` builds parsers from this table; `settings.py` checks values
against the choices). Kept apart from settings.py so that file holds the fields and their rules.
"""

QUANT_FORMATS = ("none", "fp8", "int8", "int4", "nf4", "bnb-int8")
DISPATCH_DESIGNS = ("allgather", "alltoall", "padded")     # expert-parallel dispatch/combine (parallel.py)

# field -> (flag, argparse kwargs). One flag per field; --fused is the README's shorthand for --experts fused.
SETTINGS_FLAGS = {
    "device": ("--device", dict(help="cpu | cuda | cuda:N (auto: cuda when available)")),
    "dtype": ("--dtype", dict(help="bf16 | fp16 | fp32 (auto: bf16 on a GPU, fp32 on a CPU)")),
    "experts": ("--experts", dict(help="routed expert path: loop (the oracle) | grouped | fused")),
    "attn": ("--attn", dict(help="decode attention: sdpa | triton | flash (auto: triton on a GPU, sdpa on a CPU)")),
    "ops": ("--ops", dict(help="RMSNorm(+add), q/k-norm+rope+cache write, router top-k: torch (several kernels "
                                "each) | triton (one each); auto: triton on a GPU")),
    "gemv": ("--gemv", dict(help="decode-size linears: torch (cuBLAS) | triton (kernels/gemv.py) | stream (the MoE "
                                  "decode kernel as a dense GEMV, batch 1-2) | skinny (split-K tensor-core GEMM, 1-64 tokens, "
                                  "routers too; kernels/skinny_gemm.py); auto: per shape as measured on the "
                                  "H200 (linear.auto_gemv), torch on a CPU")),
    "pdl": ("--pdl", dict(help="Programmatic Dependent Launch for minimoe's Triton kernels (the MoE's GEMM2 "
                                "never; kernels/pdl.py): on (sm90+) | off; auto: on when the device is sm90+ and "
                                "--ep / --tp are 1 (measured there), else off")),
    "fold_norm": ("--fold-norm", dict(help="an MoE layer's RMSNorm (+ residual add) inside its router's kernel for "
                                            "one-token steps (batch-1 decode): on (needs --ops triton) | off; auto: on "
                                            "with --ops triton")),
    "fuse_shared": ("--fuse-shared", dict(help="DeepSeek's / Qwen2-MoE's shared experts inside the routed experts' "
                                               "kernels (shared_fusion.py): on (needs --experts fused, --quant none, "
                                               "no --ep / --tp; then a layer fuses a one-token step on the decode "
                                               "(small) plan and a step of up to 64 tokens, batch x new tokens, on "
                                               "the aligned plan; which plan a step takes depends on tokens x top-k "
                                               "against the expert count; bench.py --profile notes small+shared / "
                                               "aligned+shared) | off; auto: on where it can run")),
    "fuse_rope": ("--fuse-rope", dict(help="rotary embedding and the KV-cache write in the epilogue of the q/k/v "
                                           "GEMV at batch 1 (rope_fusion.py; layers without a q/k norm: Mixtral, "
                                           "Qwen1.5/2-MoE; --profile notes qkv+rope): on (needs --ops triton; the "
                                           "fused kernel is the q/k/v GEMV at one token whatever --gemv says) | off; "
                                           "auto: on with --ops triton and --gemv auto | stream (on a GPU)")),
    "fold_router": ("--fold-router", dict(help="an MoE layer's router, with the residual add and RMSNorm before it, "
                                               "in the epilogue of the attention's o projection GEMV at batch 1 "
                                               "(router_fusion.py, kernels/o_route.py; the logits skip one bf16 "
                                               "rounding of h, so near-ties may route differently; routers of up "
                                               "to 64 experts; --profile notes router: o+norm+route): on (needs "
                                               "--ops triton and --fold-norm on) | off; auto: on with --ops triton "
                                               "and --fold-norm on, on a GPU")),
    "fold_attn_norm": ("--fold-attn-norm", dict(help="the attention's residual add + RMSNorm inside the q/k/v "
                                                     "projection's GEMV at batch 1 (norm_fusion.py, "
                                                     "kernels/norm_gemv.py; q/k/v skip one bf16 rounding of h; layers "
                                                     "with a q/k/v GEMV that --fuse-rope does not take: OLMoE, "
                                                     "Qwen3-MoE; --profile notes attention: norm+qkv): on (needs "
                                                     "--ops triton) | off; auto: on with --ops triton on a GPU")),
    "fuse_rope_attn": ("--fuse-rope-attn", dict(help="the q/k norm, rotary embedding and KV-cache write inside the "
                                                     "split decode-attention kernel (rope_attn_fusion.py, "
                                                     "kernels/decode_rope_attention.py; one-token decode steps, "
                                                     "power-of-two head dims, layers --fuse-rope does not take: OLMoE, "
                                                     "Qwen3-MoE; --profile notes attention: rope+attn): on (needs "
                                                     "--ops triton and --attn triton) | off; auto: "
                                                     "rope_attn_fusion.AUTO with both")),
    "eager": ("--eager", dict(action="store_true", help="no CUDA graph of the decode step")),
    "eager_prefill": ("--eager-prefill", dict(action="store_true", help="no CUDA graph of the prefill")),
    "router": ("--router", dict(help="override the card's router: a family's own (softmax_topk, topk_softmax, "
                                     "group_limited_greedy, sigmoid_group_bias) or a synthetic one for ablations "
                                     "(uniform, balanced, zipf)")),
    "top_k": ("--topk", dict(type=int, help="route each token to K experts instead of the card's default")),
    "zipf_s": ("--zipf-s", dict(type=float, help="exponent of --router zipf")),
    "skip_threshold": ("--skip-threshold", dict(type=float, help="dynamic expert skipping: drop routed experts "
                                                                 "whose weight is below beta x the token's top weight")),
    "quant": ("--quant", dict(help="weight format: " + " | ".join(QUANT_FORMATS))),
    "quant_lm_head": ("--quant-lm-head", dict(action="store_true", help="quantize the LM head too")),
    "ep": ("--ep", dict(type=int, help="expert-parallel ranks (under torchrun)")),
    "tp": ("--tp", dict(type=int, help="tensor-parallel ranks (under torchrun)")),
    "dispatch": ("--dispatch", dict(help="expert-parallel dispatch/combine: " + " | ".join(DISPATCH_DESIGNS))),
    "allreduce": ("--allreduce", dict(help="tensor-parallel all-reduce: nccl (the process group's; gloo on CPUs) | "
                                           "symm (one-shot over symmetric memory up to 1 MiB, NCCL above; GPUs of "
                                           "one node) | auto (symm where it can run, else nccl)")),
    "draft": ("--draft", dict(help="speculative decoding: draft model (card, checkpoint dir or hub id) sharing the "
                                    "target's vocabulary")),
    "draft_weights": ("--draft-weights", dict(help="the draft's weights: auto | dummy | a safetensors directory")),
    "gamma": ("--gamma", dict(help="draft tokens per round: 1..16, or auto (cost model; 0 = speculation off)")),
    "draft_accept": ("--draft-accept", dict(type=float, help="synthetic acceptance A in [0, 1]: the draft proposes "
                                                             "the target's token with probability A (speed studies)")),
    "seed": ("--seed", dict(type=int, help="seed for dummy weights, prompts and sampling")),
}
