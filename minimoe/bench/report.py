"""What a benchmark run prints: the machine and its ceilings, what ran, one row per configuration.

The header states everything a reader needs to reproduce or distrust a figure: GPU, software,
measured ceilings, the model and where its weights came from (a checkpoint directory, or random
weights with the real shapes), the dtype and every resolved run setting. Each row puts the
roofline beside the measurement; a figure above 100% of its ceiling is flagged as a measurement bug.
"""
from __future__ import annotations

import platform

import torch

from ..quant import FORMATS

COLUMNS = ("config", "TTFT ms", "ITL p50", "ITL p90", "E2E s", "out tok/s", "paper tok/s", "prefill tok/s",
           "mem GiB", "floor tok/s", "%floor", "%decode", "%prefill", "non-finite", "step MB")
# step MB: the bytes a decode step reads at the mean context (weights, the experts the router touched, KV cache),
# the roofline's numerator: pruning, skipping, --topk and --quant move it


def versions(device: torch.device) -> dict:
    v = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = None
    if device.type == "cuda":
        v["gpu"] = torch.cuda.get_device_name(device)
        v["cuda"] = torch.version.cuda
    else:
        v["gpu"] = None
        v["cpu"] = platform.processor() or platform.machine()
    return v


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _count(n: int) -> str:
    """A parameter count as the field writes it: 6.92B, 264.5K."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}" if n < 100 * div else f"{n / div:.1f}{unit}"
    return str(n)


def _per_layer(cfg, of) -> str:
    """One MoE layer's value, or "lo-hi (per layer)" for a checkpoint whose layers differ (pruned per layer)."""
    vals = sorted({of(i) for i in range(cfg.n_layers) if cfg.is_moe_layer(i)})
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]} (per layer)"


def print_header(v: dict, cfg, pc, settings, ceilings: dict, graphs: str, weights: str) -> None:
    where = v["gpu"] or v.get("cpu")
    print(f"# minimoe bench | {where} | torch {v['torch']} | triton {v['triton']} | CUDA {v.get('cuda')}")
    print(f"# ceilings ({ceilings['source']}): bandwidth {ceilings['bandwidth_GBps']:.0f} GB/s "
          f"(copy {_f(ceilings.get('copy_GBps'), '.0f')}, read {_f(ceilings.get('read_GBps'), '.0f')}, "
          f"stream {_f(ceilings.get('stream_read_GBps'), '.0f')}), matmul {ceilings['matmul_TFLOPs']:.4g} TFLOP/s")
    k = settings.top_k or cfg.top_k
    moe = f"E={_per_layer(cfg, cfg.layer_experts)} K={k} I={_per_layer(cfg, cfg.layer_moe_width)}" if cfg.is_moe \
        else "dense"
    print(f"# model {cfg.extra.get('name') or cfg.family} ({cfg.family}): L={cfg.n_layers} D={cfg.hidden_size} "
          f"{moe} attn={cfg.attention} | params {_count(pc.total)} total, "
          f"{_count(pc.active(cfg, settings.top_k))} active | weights: {weights}")
    if pc.stored is not None:          # quantized: what the roofline counts (codes + scales + zero points)
        wbytes = settings.torch_dtype.itemsize
        what = FORMATS[pc.stored.fmt].what + (", LM head too" if cfg.extra["weight_format"]["lm_head"] else "")
        print(f"# weight format {pc.stored.fmt} ({what}): {_bytes(pc.weight_bytes(wbytes))} stored "
              f"({_bytes(pc.total * wbytes)} in {settings.dtype}), {_bytes(pc.stored.per_expert)} per routed expert")
    print(f"# run: {settings.describe(cfg)} graphs={graphs}")


def _bytes(n: float) -> str:
    """A byte count in the largest binary unit that keeps it >= 1 (GiB, MiB, KiB), two decimals."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def row(label: str, m: dict, r: dict | None, mem, nonfinite=None) -> tuple:
    return (label, f"{m['ttft_ms']:.1f}", _f(m['itl_median_ms'], ".3f"), _f(m['itl_p90_ms'], ".3f"),
            f"{m['e2e_s']:.3f}", f"{m['output_tok_s']:.1f}", f"{m['throughput_tok_s']:.1f}",
            f"{m['prefill_tok_s']:.0f}", f"{mem:.1f}" if mem is not None else "-",
            f"{r['output_tok_s_floor']:.0f}" if r else "-", f"{r['e2e_pct_of_floor']:.0f}%" if r else "-",
            _f(r['decode_pct_of_floor'], ".0f") + "%" if r and r['decode_pct_of_floor'] else "-",
            f"{r['prefill_pct_of_peak']:.0f}%" if r else "-", "-" if nonfinite is None else str(nonfinite),
            f"{r['decode_step_bytes']['total'] / 1e6:.1f}" if r else "-")


def print_table(rows: list) -> None:
    widths = [max(len(str(r[i])) for r in [COLUMNS] + rows) for i in range(len(COLUMNS))]
    for r in [COLUMNS] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def print_profile(label: str, prof: dict) -> None:
    print(f"# profile {label}: eager decode step {prof['step_ms']:.3f} ms, regions cover "
          f"{prof['coverage_pct']:.0f}%" + "".join(f"; {k}: {v}" for k, v in (prof["notes"] or {}).items()))
    for name, v in sorted(prof["regions"].items(), key=lambda kv: -kv[1]["ms_per_step"]):
        print(f"#   {name:10s} {v['ms_per_step']:8.3f} ms  {v['calls_per_step']:6.1f} calls  {v['pct']:5.1f}%")
