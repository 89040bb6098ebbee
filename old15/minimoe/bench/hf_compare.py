"""The peer in the same run: `transformers`' own implementation of the same config.

`bench.py --compare transformers` builds the Hugging Face model from the same config.json, on the
same device and dtype, and when both fit in memory gives minimoe the *same* random weights (copied
from the transformers model's state_dict through the loader's recipes, which know transformers-v5's
fused expert names). It then times the same batch of prompts with the same events: prefill with
`logits_to_keep=1`, then one token per step through transformers' dynamic cache, greedy, EOS
ignored. transformers runs with its default attention (SDPA) and expert implementation unless
`--hf-experts` names another.
"""
from __future__ import annotations

import logging
import statistics
import warnings

import torch

from ..loader import export_weights
from .timing import Clock


def build_hf(card: dict, dtype: torch.dtype, device: torch.device, experts_impl: str | None = None):
    try:
        import transformers
    except ImportError as e:
        raise ValueError("--compare transformers needs transformers: pip install 'minimoe[test]'") from e
    if card.get("model_type") == "deepseek":
        raise ValueError("--compare transformers: DeepSeekMoE-16B is remote code, which minimoe never runs")
    config = transformers.AutoConfig.for_model(**card)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    if experts_impl:
        model.set_experts_implementation(experts_impl)
    return model.eval()


def build_peer(model, card: dict, dtype: torch.dtype, device: torch.device, experts_impl: str | None = None):
    """(transformers model, shared): the same weights as our `model` when both fit in memory with
    room for transformers' activations and cache (16 GiB or a quarter more); otherwise ours is
    freed first and transformers keeps its own random init."""
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shared = device.type != "cuda" or wbytes + max(wbytes / 4, 16 * 2 ** 30) < torch.cuda.mem_get_info(device)[0]
    if not shared:
        model.to("meta")
        torch.cuda.empty_cache()
    hf = build_hf(card, dtype, device, experts_impl)
    if shared:
        export_weights(model, dict(hf.state_dict()))
    return hf, shared


@torch.inference_mode()
def timed_hf_generation(model, prompts: torch.Tensor, out_len: int, steps: int | None = None) -> dict:
    """Like benchmark.timed_generation. With `steps` < out_len-1, only that many decode steps run and
    E2E is extrapolated as TTFT + (out_len-1) * median step (said so in the output)."""
    warnings.filterwarnings("ignore", message=".*past_key_values.*")   # the name 5.17 and 5.24 both accept
    logging.getLogger("transformers").setLevel(logging.ERROR)
    clock = Clock(prompts.device)
    clock.mark()
    out = model(input_ids=prompts, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1)
    past = out.past_key_values
    clock.mark()
    n_steps = out_len - 1 if steps is None else min(steps, out_len - 1)
    for _ in range(n_steps):
        out = model(input_ids=tok[:, None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1)
        clock.mark()
    ms = clock.intervals_ms()
    itl = ms[1:]
    e2e = sum(ms)
    if n_steps < out_len - 1 and itl:
        e2e = ms[0] + (out_len - 1) * statistics.median(itl)
    return {"ttft_ms": ms[0], "itl_ms": itl, "e2e_ms": e2e, "last_tokens": tok, "steps_timed": n_steps}
