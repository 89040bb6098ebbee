"""Run settings: every switch of a run as one typed field, with one set of command-line flags.

`ModelConfig` says what a model IS; `RunSettings` says how to RUN it: which expert path, attention
backend, small-op kernels, CUDA graphs, quantization, expert skipping, speculation, parallel plan.
Every field defaults to the plain path, so an ablation flips one field and nothing else. The
modules of a built model hold a reference to one shared instance and read it at call time: flipping
a field needs no rebuild and keeps the same weights.

`add_args` puts one flag per field on a parser and `from_args` reads them back, so bench.py,
`python -m minimoe generate | eval | bench` and the scripts share one meaning and one default per
flag (`SETTINGS_FLAGS`, in settings_flags.py, is the table). Values spelled "auto" are resolved once, for the device, by
`resolve`: a resolved RunSettings holds concrete choices only, which is what headers and JSON print.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

import torch

from .settings_flags import DISPATCH_DESIGNS, QUANT_FORMATS, SETTINGS_FLAGS

EXPERT_PATH_NAMES = ("loop", "grouped", "fused")          # experts.EXPERT_PATHS (checked against it in tests)
ATTN_NAMES = ("auto", "sdpa", "triton", "flash")           # attention.DECODE_ATTENTION + auto
ALLREDUCE_DESIGNS = ("auto", "nccl", "symm")               # tensor-parallel all-reduce (allreduce.py)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass
class RunSettings:
    device: str = "auto"            # cpu | cuda | cuda:N; auto = cuda when available
    dtype: str = "auto"             # bf16 | fp16 | fp32; auto = bf16 on a GPU, fp32 on a CPU
    experts: str = "loop"           # routed expert path, key into experts.EXPERT_PATHS (loop is the oracle)
    attn: str = "auto"              # decode attention backend; auto = triton on a GPU, sdpa on a CPU
    ops: str = "auto"               # small ops (RMSNorm+add, q/k norm+rope+cache write, router top-k):
                                    # torch (several kernels each) | triton (one each); auto = triton on a GPU
    gemv: str = "auto"              # decode-size linears: torch (cuBLAS) | triton | stream | skinny; auto = per shape (GPU)
    pdl: str = "auto"               # Programmatic Dependent Launch: on | off; auto: on for an sm90+ device, no EP/TP
    fold_norm: str = "auto"         # an MoE layer's RMSNorm inside its router's kernel for one-token steps:
                                    # on | off; auto = on with --ops triton (model.Block, kernels/gate_splitk_fold.py)
    fuse_shared: str = "auto"       # shared experts inside the routed experts' decode kernels (shared_fusion.py):
                                    # on | off; auto = on for --experts fused, unquantized, no EP / TP plan
    fuse_rope: str = "auto"         # rotary embedding + KV-cache write inside the q/k/v GEMV at batch 1 (rope_fusion.py):
                                    # on (needs --ops triton; its own GEMV whatever --gemv says) | off;
                                    # auto = on with --ops triton and --gemv auto | stream (resolved: a GPU)
    fold_router: str = "auto"       # the o projection + residual add + RMSNorm + router in one kernel at batch 1
                                    # (router_fusion.py): on (needs --ops triton, --fold-norm on) | off; auto = on
                                    # with both on a GPU (routers of up to router_fusion.MAX_EXPERTS experts)
    fold_attn_norm: str = "auto"    # the attention's residual add + RMSNorm inside its q/k/v GEMV at batch 1
                                    # (norm_fusion.py): on (needs --ops triton) | off; auto = on with --ops triton
                                    # on a GPU
    fuse_rope_attn: str = "auto"    # the q/k norm + rope + KV-cache write inside the decode attention kernel
                                    # (rope_attn_fusion.py): on (needs --ops triton and --attn triton) | off;
                                    # auto = rope_attn_fusion.AUTO with both (a GPU)
    eager: bool = False             # no CUDA graph of the decode step (graphs need a GPU and a sync-free path)
    eager_prefill: bool = False     # no CUDA graph of the prefill
    router: str | None = None       # override the card's router (synthetic ones for ablations)
    top_k: int | None = None        # override the card's K (the paper's top-k sweeps)
    zipf_s: float = 1.2             # exponent of the synthetic Zipf router
    skip_threshold: float = 0.0     # dynamic expert skipping: drop routed experts whose weight < beta * top weight
    quant: str = "none"             # weight format applied at load (quant.py)
    quant_lm_head: bool = False     # quantize the LM head too (router, norms, embeddings always stay)
    ep: int = 1                     # expert-parallel ranks (parallel.py; under torchrun)
    tp: int = 1                     # tensor-parallel ranks
    dispatch: str = "allgather"     # expert-parallel dispatch/combine design
    allreduce: str = "auto"         # tensor-parallel all-reduce: nccl (gloo on CPUs) | symm (one-shot, symmetric
                                    # memory); auto = symm for --tp > 1 on GPUs of one node, else nccl
    draft: str | None = None        # speculative decoding: the draft model (card, dir or hub id; same vocabulary)
    draft_weights: str = "auto"     # the draft's weights, as --weights
    gamma: str = "0"                # draft tokens per round: an int (0 = off) or auto (spec_cost.py picks per batch)
    draft_accept: float | None = None  # synthetic acceptance rate A for speed studies on random weights
    seed: int = 0                   # dummy weights, prompts and sampling

    # ---- resolution -----------------------------------------------------------------------------
    def resolve(self) -> "RunSettings":
        """A copy with every "auto" replaced by the concrete choice for this machine. Raises
        ValueError (one sentence) for a value that is not one of the choices."""
        s = dataclasses.replace(self)
        if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed < 2 ** 63:
            raise ValueError(f"--seed must be an int in [0, 2**63), got {s.seed!r}")
        if not 0 <= s.zipf_s < float("inf"):
            raise ValueError(f"--zipf-s must be finite and >= 0 (0 routes uniformly), got {s.zipf_s}")
        s.device = str(pick_device(s.device))
        gpu = s.device.startswith("cuda")
        s.dtype = DTYPE_ALIASES.get(s.dtype, s.dtype)
        if s.dtype == "auto":
            s.dtype = "bf16" if gpu else "fp32"
        _choose("dtype", s.dtype, tuple(DTYPES))
        _choose("experts", s.experts, EXPERT_PATH_NAMES)
        _choose("attn", s.attn, ATTN_NAMES)
        _choose("ops", s.ops, ("auto", "torch", "triton"))
        _choose("gemv", s.gemv, ("auto", "torch", "triton", "stream", "skinny"))
        for switch in ("pdl", "fold_norm", "fuse_shared", "fuse_rope", "fold_router", "fold_attn_norm", "fuse_rope_attn"):
            _choose(switch, getattr(s, switch), ("auto", "on", "off"))
        _choose("quant", s.quant, QUANT_FORMATS)
        _choose("dispatch", s.dispatch, DISPATCH_DESIGNS)
        _choose("allreduce", s.allreduce, ALLREDUCE_DESIGNS)
        s.attn = ("triton" if gpu else "sdpa") if s.attn == "auto" else s.attn
        s.ops = ("triton" if gpu else "torch") if s.ops == "auto" else s.ops
        s.gemv = ("auto" if gpu else "torch") if s.gemv == "auto" else s.gemv   # per shape: linear.auto_gemv
        if s.pdl == "auto":      # on where measured (kernels/pdl.py): one sm90+ GPU, no EP / TP plan
            s.pdl = "on" if s.tp == 1 and s.ep == 1 and _hopper(s, gpu) else "off"
        s.fold_norm = ("on" if s.ops == "triton" else "off") if s.fold_norm == "auto" else s.fold_norm
        if s.fold_norm == "on" and s.ops != "triton":
            raise ValueError("--fold-norm on runs the norm inside the router's Triton kernel: it needs --ops triton")
        if s.fuse_shared == "auto":
            s.fuse_shared = "on" if s.experts == "fused" and s.quant == "none" and s.tp == 1 and s.ep == 1 else "off"
        if s.fuse_shared == "on" and (s.experts != "fused" or s.quant != "none" or s.tp > 1 or s.ep > 1):
            raise ValueError("--fuse-shared on runs the shared experts inside the fused MoE kernels: it needs "
                             f"--experts fused, --quant none and no --ep / --tp plan (got --experts {s.experts}, "
                             f"--quant {s.quant}, --ep {s.ep}, --tp {s.tp})")
        if s.fuse_rope == "auto":        # where the stream GEMV runs the q/k/v projection at one token (a GPU)
            s.fuse_rope = "on" if s.ops == "triton" and s.gemv in ("auto", "stream") else "off"
        if s.fuse_rope == "on" and s.ops != "triton":
            raise ValueError("--fuse-rope on runs rope and the cache write in the q/k/v GEMV's Triton kernel: it needs "
                             f"--ops triton (got --ops {s.ops})")
        if s.fold_router == "auto":       # measured faster at bs 1 on four of five models (docs/results.md, session 30)
            s.fold_router = "on" if s.ops == "triton" and gpu and s.fold_norm == "on" else "off"
        if s.fold_router == "on" and (s.ops != "triton" or s.fold_norm != "on"):
            raise ValueError("--fold-router on runs the router fold (--fold-norm's) inside the o projection's Triton "
                             f"kernel: it needs --ops triton and --fold-norm on (got --ops {s.ops}, --fold-norm "
                             f"{s.fold_norm})")
        if s.fold_attn_norm == "auto":    # measured faster at bs 1 where it applies (docs/results.md, session 31);
            s.fold_attn_norm = "on" if s.ops == "triton" and gpu and s.tp == 1 else "off"   # not yet under TP
        if s.fold_attn_norm == "on" and s.ops != "triton":
            raise ValueError("--fold-attn-norm on runs the attention's RMSNorm inside the q/k/v GEMV's Triton kernel: "
                             f"it needs --ops triton (got --ops {s.ops}"
                             + (", which auto resolves to without a GPU)" if self.ops == "auto" else ")"))
        if s.fuse_rope_attn == "auto" and (s.ops != "triton" or s.attn != "triton"):
            s.fuse_rope_attn = "off"      # else stays auto: rope_attn_fusion.AUTO decides at call time
        if s.fuse_rope_attn == "on" and (s.ops != "triton" or s.attn != "triton"):
            raise ValueError("--fuse-rope-attn on runs rope and the cache write inside the Triton decode attention "
                             f"kernel: it needs --ops triton and --attn triton (got --ops {s.ops}, --attn {s.attn})")
        if s.allreduce == "auto":                            # symm measured faster at every batch (parallelism.md)
            s.allreduce = "symm" if _symm_fits(s, gpu) else "nccl"
        if s.dispatch != "allgather" and s.ep == 1:        # the default design is the only one taken silently
            raise ValueError(f"--dispatch {s.dispatch} is expert parallelism's token exchange: it needs --ep 2 or more")
        if s.allreduce == "symm" and s.tp == 1:
            raise ValueError("--allreduce symm is the tensor-parallel all-reduce: it needs --tp 2 or more")
        if s.allreduce == "symm" and not gpu:
            raise ValueError("--allreduce symm needs CUDA GPUs (symmetric memory); on CPUs use nccl (gloo there)")
        if s.top_k is not None and s.top_k < 1:
            raise ValueError(f"--topk must be at least 1, got {s.top_k}")
        if not 0.0 <= s.skip_threshold < 1.0:
            raise ValueError(f"--skip-threshold must be in [0, 1), got {s.skip_threshold}")
        _check_speculation(s)
        if s.ep < 1 or s.tp < 1:
            raise ValueError(f"--ep and --tp must be at least 1, got {s.ep} and {s.tp}")
        return s

    def resolve_(self) -> "RunSettings":
        """Resolve in place (modules share this instance), and return self."""
        for f, v in vars(self.resolve()).items():
            setattr(self, f, v)
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def use_graphs(self) -> bool:
        return not self.eager and self.device.startswith("cuda")

    def as_json(self, cfg=None) -> dict:
        """Every field as a JSON-ready dict, as the header's line names them (describe): --gamma a number unless it
        is auto, the all-reduce nccl/gloo where gloo stands in for NCCL on a CPU. With the model's config (a
        ModelConfig), a switch with nothing to act on in it reads off: fuse_shared for a model without shared
        experts (shared_fusion.py fuses nothing there); the settings themselves are not changed."""
        d = dataclasses.asdict(self)
        d["gamma"] = d["gamma"] if d["gamma"] == "auto" or not str(d["gamma"]).isdigit() else int(d["gamma"])
        if self.allreduce == "nccl" and self.device == "cpu":
            d["allreduce"] = "nccl/gloo"
        if cfg is not None and not cfg.shared_intermediate_size:
            d["fuse_shared"] = "off"
        return d

    def describe(self, cfg=None) -> str:
        """One header line of every resolved choice (what ran; nccl/gloo: the process group's all-reduce on a CPU).
        With the model's config, as as_json(cfg), and the router and K it uses where no flag set them show as
        card:NAME / card:K."""
        d = self.as_json(cfg)
        if cfg is not None and cfg.is_moe:
            d["router"] = d["router"] or f"card:{cfg.router}"
            d["top_k"] = d["top_k"] or f"card:{cfg.top_k}"
        return " ".join(f"{k}={v}" for k, v in d.items())


MAX_GAMMA = 16


def _check_speculation(s: RunSettings) -> None:
    """--draft/--gamma/--draft-accept/--draft-weights agree with each other (speculative.py runs them)."""
    if s.gamma != "auto" and not (str(s.gamma).isdigit() and int(s.gamma) <= MAX_GAMMA):
        raise ValueError(f"--gamma {s.gamma}: an integer 1..{MAX_GAMMA} draft tokens a round, auto, or 0 (off)")
    if s.draft is None:
        extra = [f for f, on in (("--gamma", str(s.gamma) != "0"), ("--draft-accept", s.draft_accept is not None),
                                 ("--draft-weights", s.draft_weights != "auto")) if on]
        if extra:
            raise ValueError(f"{extra[0]} needs --draft MODEL")
    elif str(s.gamma) == "0":
        raise ValueError(f"--draft needs --gamma G (1..{MAX_GAMMA}, or auto): 0 turns speculation off")
    if s.draft_accept is not None and not 0.0 <= s.draft_accept <= 1.0:
        raise ValueError(f"--draft-accept must be in [0, 1], got {s.draft_accept}")


def _choose(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"--{name.replace('_', '-')} {value}: choose from {', '.join(map(str, choices))}")


def _hopper(s: "RunSettings", gpu: bool) -> bool:
    """A CUDA device of compute capability 9 or more (griddepcontrol)."""
    if not (gpu and torch.cuda.is_available()):
        return False
    dev = torch.device(s.device)
    return torch.cuda.get_device_capability(dev.index if dev.index is not None else torch.cuda.current_device())[0] >= 9


def _symm_fits(s: "RunSettings", gpu: bool) -> bool:
    """--allreduce auto: symmetric memory needs GPUs, a dtype the one-shot op has (bf16, fp32), torch's op, and
    every TP group inside one node (ranks e·tp .. e·tp + tp - 1 share a node when the node's process count is a
    multiple of tp)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return (gpu and s.tp > 1 and local % s.tp == 0 and s.dtype in ("bf16", "fp32")
            and hasattr(torch.ops, "symm_mem") and hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out"))


def pick_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not a device name (cpu, cuda, cuda:N)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"--device {name}: minimoe runs on cpu or cuda")
    elif dev.index:                                                    # cpu:0 is the CPU; cpu:1 is nothing
        raise ValueError(f"--device {name}: the CPU is one device: give cpu")
    return torch.device("cpu") if dev.type == "cpu" else dev


def triton_usable(device: str | torch.device) -> bool:
    """Triton kernels run on a CUDA GPU, or on the CPU through the interpreter (tests)."""
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


# ---- command line (the flags' table: settings_flags.py) -----------------------------------------

SPECULATION = ("draft", "draft_weights", "gamma", "draft_accept")   # the decoding-only settings


def given(args: argparse.Namespace, names) -> list[str]:
    """The flags among the fields `names` that the command line set to something other than the default."""
    return [SETTINGS_FLAGS[n][0] for n in names if getattr(args, n) != getattr(RunSettings, n)]


def add_args(parser: argparse.ArgumentParser, defaults: RunSettings | None = None, hidden: tuple = ()) -> None:
    """One flag per RunSettings field (plus --fused), defaults from `defaults` (shown in --help). Fields named in
    `hidden` are still parsed (a command refuses them with its own message) but left out of --help."""
    assert set(hidden) <= SETTINGS_FLAGS.keys(), set(hidden) - SETTINGS_FLAGS.keys()
    base = defaults or RunSettings()
    g = parser.add_argument_group("run settings (one switch per optimization)")
    for name, (flag, kw) in SETTINGS_FLAGS.items():
        kw = dict(kw)
        if kw.get("action") != "store_true":
            kw["default"] = getattr(base, name)
            kw["help"] = f"{kw['help']} (default: {kw['default']})"
            if name == "experts":        # None until from_args: an explicit --experts loop contradicts --fused
                kw["default"] = None
                parser.set_defaults(experts_default=base.experts)
        if name in hidden:
            kw["help"] = argparse.SUPPRESS
        g.add_argument(flag, dest=name, **kw)
    g.add_argument("--fused", action="store_true", help="shorthand for --experts fused")


def from_args(args: argparse.Namespace) -> RunSettings:
    """The RunSettings the parsed flags describe (not yet resolved). ValueError for contradictions."""
    values = {name: getattr(args, name) for name in SETTINGS_FLAGS}
    if getattr(args, "fused", False):
        if values["experts"] not in (None, "fused"):
            raise ValueError(f"--fused contradicts --experts {values['experts']}")
        values["experts"] = "fused"
    if values["experts"] is None:          # add_args' parsers leave it unset, their default kept beside it
        values["experts"] = getattr(args, "experts_default", RunSettings.experts)
    if values["router"] != "zipf" and values["zipf_s"] != RunSettings.zipf_s:
        raise ValueError("--zipf-s only means something with --router zipf")
    return RunSettings(**values)


def to_args(s: RunSettings) -> list[str]:
    """The command-line flags that reproduce `s` (from_args(parse(to_args(s))) == s)."""
    out = []
    for name, (flag, kw) in SETTINGS_FLAGS.items():
        value = getattr(s, name)
        if name == "zipf_s" and s.router != "zipf":        # from_args refuses it without the zipf router
            continue
        if kw.get("action") == "store_true":
            out += [flag] if value else []
        elif value is not None:
            out += [flag, str(value)]
    return out
