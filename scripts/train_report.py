"""The record of a training run: one JSON log for every model and one figure of their loss curves.

`train_log.json` is merged, not overwritten: training one model again replaces that model's entry
and keeps the others, so four models trained by four commands (or four processes) end in one file.
Each entry says what was trained (config, parameters total / active / embedding, bytes on disk),
how (device, precision, experts implementation that actually ran, steps, tokens, wall time, the
command) and how well (final train loss, held-out loss / perplexity / bits per byte).

`loss_curves.png`: train loss (solid, the mean over each logging interval) and the periodic held-out
loss on a prefix of the held-out text (dots) against tokens seen (and steps, on the top axis, when
every model used the same batch shape), one colour per model, log-scale loss.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def write_report(log_dir: Path, logs: dict, corpus_meta: dict, command: str) -> Path:
    """Merge `logs` (name -> entry) into `<log_dir>/train_log.json`, redraw the figure; returns the JSON path."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "train_log.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.setdefault("models", {}).update(logs)
    merged.update(command=command, corpus=corpus_meta, written=time.strftime("%Y-%m-%d %H:%M:%S"))
    merged["summary"] = {name: summary(entry) for name, entry in sorted(merged["models"].items())}
    path.write_text(json.dumps(merged, indent=1) + "\n")
    try:
        plot(merged["models"], log_dir / "loss_curves.png")
    except ImportError as err:          # the log matters more than the figure: redraw it elsewhere
        print(f"no loss_curves.png ({err}); redraw: python scripts/train_report.py {path}", file=sys.stderr)
    return path


def summary(entry: dict) -> dict:
    return dict(params_total=entry["params"]["total"], params_active=entry["params"]["active"],
                disk_mb=None if entry["disk_bytes"] is None else round(entry["disk_bytes"] / 1e6, 2),
                steps=entry["steps"], tokens_m=round(entry["tokens_seen"] / 1e6, 2),
                train_s=entry["train_time_s"], train_loss=entry["final_train_loss"],
                heldout_loss=round(entry["heldout"]["loss"], 4), heldout_bpb=round(entry["heldout"]["bpb"], 4),
                device=entry["device"], experts=entry["experts_implementation"], precision=entry["precision"])


def plot(models: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, entry) in enumerate(sorted(models.items())):
        color = f"C{i}"
        hist, evals = entry["history"], entry["evals"]
        label = f"{name} ({entry['params']['active'] / 1e6:.2f}M active): held-out {entry['heldout']['bpb']:.3f} bpb"
        ax.plot([h["tokens"] / 1e6 for h in hist], [h["loss"] for h in hist], color=color, lw=1, label=label)
        ax.plot([e["tokens"] / 1e6 for e in evals], [e["loss"] for e in evals], "o", color=color, ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen (millions)")
    per_step = {e["settings"]["batch"] * e["settings"]["seq_len"] for e in models.values()}
    if len(per_step) == 1:               # one batch shape for all: the same axis counts steps too
        k = per_step.pop() / 1e6
        ax.secondary_xaxis("top", functions=(lambda t: t / k, lambda s: s * k)).set_xlabel("step")
    ax.set_ylabel("loss (nats / token): train solid, held-out dots")
    device = {entry["device"] for entry in models.values()}
    ax.set_title(f"minimoe small models on the Python stdlib ({', '.join(sorted(device))})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":           # redraw the figure from a log: python scripts/train_report.py LOG.json
    log_path = Path(sys.argv[1])
    plot(json.loads(log_path.read_text())["models"], log_path.parent / "loss_curves.png")
