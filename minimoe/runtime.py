"""Run-time choices shared by the CLIs: device, dtype, and checking run settings before heavy work.

Every check here fails fast with one clear sentence: an unknown expert path or router, a GPU-only
option on a machine without a GPU, flags that contradict each other. Nothing silently falls back to
another path, because that would change what a benchmark measures.
"""
from __future__ import annotations

import os

import torch

from .attention import check_attn_backend
from .config import ModelConfig, RunSettings
from .experts import EXPERT_PATHS
from .router import ROUTERS

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


class UsageError(ValueError):
    """Bad input from the command line: reported as one line, exit status 2."""


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here")
    return dev


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: choose from {sorted(set(DTYPES))}")
    return DTYPES[name]


def triton_usable(device: torch.device) -> bool:
    """Triton kernels run on a CUDA GPU, or on the CPU through the interpreter (tests)."""
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_auto(attn: str, ops: str, device: torch.device) -> tuple[str, bool]:
    """--attn auto / --ops auto: the Triton kernels on a GPU, PyTorch on a CPU (printed in headers)."""
    if ops not in ("auto", "torch", "triton"):
        raise UsageError(f"--ops {ops}: choose auto, torch or triton")
    if ops == "triton" and not triton_usable(device):
        raise UsageError("--ops triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tests)")
    gpu = device.type == "cuda"
    return ("triton" if gpu else "sdpa") if attn == "auto" else attn, (gpu if ops == "auto" else ops == "triton")


def resolve_gemv(gemv: str, device: torch.device) -> bool:
    """--gemv auto = torch everywhere: on the H200 the Triton GEMV only ties cuBLAS, and with the
    RMSNorm folded in it is slower than the norm kernel + cuBLAS (scripts/bench_gemv.py, README)."""
    if gemv not in ("auto", "torch", "triton"):
        raise UsageError(f"--gemv {gemv}: choose auto, torch or triton")
    if gemv == "triton" and not triton_usable(device):
        raise UsageError("--gemv triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tests)")
    return gemv == "triton"


def resolve_pdl(pdl: str, device: torch.device) -> bool:
    """--pdl auto = off: on the H200 PDL made the batch-1 steps slower (Mixtral 6.92 -> 7.68 ms,
    OLMoE 1.21 -> 1.37 ms): early-launched programs park on SMs the running kernel's later waves
    need. `on` needs sm90+. Sets the kernels' process-wide switch."""
    if pdl not in ("auto", "on", "off"):
        raise UsageError(f"--pdl {pdl}: choose auto, on or off")
    capable = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
    if pdl == "on" and not capable:
        raise UsageError("--pdl on needs a Hopper (sm90) or newer GPU")
    from .kernels.pdl import set_enabled
    on = pdl == "on"
    set_enabled(on)
    return on


def check_settings(s: RunSettings, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
    if s.experts not in EXPERT_PATHS:
        raise UsageError(f"unknown expert path {s.experts!r}; choose from {sorted(EXPERT_PATHS)}")
    if s.experts == "fused" and not triton_usable(device):
        raise UsageError("the fused expert path (--experts fused) needs a CUDA GPU (or TRITON_INTERPRET=1 for tests)")
    if s.experts != "loop" and not cfg.is_moe:
        raise UsageError(f"--experts {s.experts} needs an MoE model")
    if s.router is not None and s.router not in ROUTERS:
        raise UsageError(f"unknown router {s.router!r}; choose from {sorted(ROUTERS)}")
    if s.top_k is not None and not cfg.is_moe:
        raise UsageError("--topk needs an MoE model")
    if s.top_k is not None:
        try:
            cfg.with_top_k(s.top_k)
        except ValueError as e:
            raise UsageError(str(e)) from e
    if dtype == torch.bfloat16 and device.type == "cpu" and (s.experts == "fused" or s.gemv or s.fused_ops):
        raise UsageError("the Triton interpreter cannot run bfloat16; use --dtype fp32 or fp16 on the CPU")
    try:
        check_attn_backend(s.attn, cfg, device)
    except ValueError as e:
        raise UsageError(str(e)) from e
