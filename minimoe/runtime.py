"""Checking run settings against a model and a machine, before any heavy work.

Every check here fails fast with one clear sentence (`UsageError`, exit status 2 in the CLIs): an
unknown expert path or router, a GPU-only option on a machine without a GPU, flags that contradict
each other, a feature this build cannot run. Nothing silently falls back to another path, because
that would change what a benchmark measures.
"""
from __future__ import annotations

import os

from pathlib import Path

import torch

from .config import ModelConfig
from .experts import EXPERT_PATHS, grouped_problem
from .attention import DECODE_ATTENTION
from .ops import OPS
from .quant import check_quant
from .router import ROUTERS, SYNTHETIC_ROUTERS
from .settings import RunSettings, triton_usable
from .spec_cli import draft_config


class UsageError(ValueError):
    """Bad input from the command line or the API: reported as one line, exit status 2."""


def resolve_settings(s: RunSettings) -> RunSettings:
    """RunSettings.resolve, its ValueError as a UsageError."""
    try:
        return s.resolve()
    except ValueError as e:
        raise UsageError(str(e)) from None


def _check_attn(s: RunSettings, cfg: ModelConfig, device: torch.device) -> None:
    if s.attn not in DECODE_ATTENTION:
        raise UsageError(f"unknown attention backend {s.attn!r}; choose from {sorted(DECODE_ATTENTION)}")
    if s.attn == "flash":
        if device.type != "cuda":
            raise UsageError("--attn flash needs a CUDA GPU")
        if cfg.attention == "mla":
            raise UsageError("--attn flash cannot run MLA (key and value widths differ); use triton")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise UsageError("--attn flash needs flash-attn: pip install 'minimoe[flash]'") from None
    if s.attn == "triton" and not triton_usable(device):
        raise UsageError("--attn triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tests)")


def check_settings(s: RunSettings, cfg: ModelConfig) -> None:
    """Refuse a resolved RunSettings this model or machine cannot run, naming the flag."""
    device = s.torch_device
    if s.experts not in EXPERT_PATHS:
        raise UsageError(f"unknown expert path {s.experts!r}; choose from {sorted(EXPERT_PATHS)}")
    triton_parts = [flag for flag, on in (("--experts fused", s.experts == "fused"), ("--ops triton", s.ops == "triton"),
                                          ("--gemv " + s.gemv, s.gemv in ("triton", "stream", "skinny", "auto")),
                                          ("--attn triton", s.attn == "triton"))
                    if on]
    for flag in triton_parts:
        if not triton_usable(device) or "triton" not in OPS:
            raise UsageError(f"{flag} needs Triton on a CUDA GPU (or TRITON_INTERPRET=1 for tests)")
    if triton_parts and s.dtype == "bf16" and device.type == "cpu":
        raise UsageError(f"the Triton interpreter cannot run bfloat16 ({triton_parts[0]}); use --dtype fp32 or "
                         "fp16 on the CPU")
    if s.pdl == "on" and not (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9):
        raise UsageError("--pdl on needs a Hopper (sm90) or newer GPU")
    if s.experts != "loop" and not cfg.is_moe:
        raise UsageError(f"--experts {s.experts} needs an MoE model")
    if s.experts == "grouped":                   # under --tp a rank's experts are I / tp wide
        problem = grouped_problem([cfg.layer_moe_width(i) // s.tp for i in range(cfg.n_layers) if cfg.is_moe_layer(i)],
                                  cfg.hidden_size, s.torch_dtype)
        if problem:
            raise UsageError(problem)
    if s.router is not None and s.router not in ROUTERS:
        raise UsageError(f"--router: unknown router {s.router!r}; choose {' | '.join(sorted(ROUTERS))}")
    if s.top_k is not None:
        try:
            cfg.with_top_k(s.top_k)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if s.skip_threshold and not cfg.is_moe:
        raise UsageError("--skip-threshold needs an MoE model")
    if s.skip_threshold and (s.top_k or cfg.top_k) == 1:
        raise UsageError(f"--skip-threshold {s.skip_threshold:g} drops a token's experts below that share of its top "
                         "weight: each token is routed to one expert (K=1, from --topk or the card), so there is "
                         "nothing to drop")
    if s.router is not None and not cfg.is_moe:
        raise UsageError(f"--router {s.router} needs an MoE model")
    problem = check_quant(s, cfg)                 # formats, machine, pre-quantized checkpoints (quant.py)
    if problem:
        raise UsageError(problem)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if s.ep * s.tp > 1 or world > 1:          # a torchrun launch without a plan would run `world` copies
        from .parallel import check_plan          # world size, divisible heads/widths/experts (parallel.py)
        try:
            check_plan(s, cfg)
        except ValueError as e:
            raise UsageError(str(e)) from None
    _check_attn(s, cfg, device)
    _check_draft(s, cfg)


def _check_draft(s: RunSettings, cfg: ModelConfig) -> None:
    """--draft: the draft model resolves, shares the target's vocabulary, and can run with these settings."""
    if s.draft is None:
        return
    if s.ep * s.tp > 1:
        raise UsageError("--draft: speculative decoding runs in one process (one device); it cannot be combined "
                         "with --ep / --tp")
    try:
        dcfg, ds = draft_config(s)
        check_settings(ds, dcfg)
    except ValueError as e:                       # CheckpointError and UsageError included
        raise UsageError(f"--draft {s.draft}: {e}") from None
    if dcfg.vocab_size != cfg.vocab_size:
        raise UsageError(f"--draft {s.draft}: its vocabulary has {dcfg.vocab_size} tokens, the target's "
                         f"{cfg.vocab_size}; draft and target must share one tokenizer")
    if s.router in SYNTHETIC_ROUTERS and s.draft_accept is None:
        raise UsageError(f"--router {s.router} routes by chance or by a token's place in the call, so the target's "
                         "verify pass and its plain decode disagree and greedy speculation stops being exact: add "
                         "--draft-accept A for a speed study")
    if s.draft_weights not in ("auto", "dummy") and not Path(s.draft_weights).expanduser().is_dir():
        raise UsageError(f"--draft-weights {s.draft_weights}: no such directory")
