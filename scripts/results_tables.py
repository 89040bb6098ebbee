"""Turn the bench JSON files of a GPU session into the README's markdown tables.

    python scripts/results_tables.py docs/results/2026-11-28
    python scripts/results_tables.py --before-after docs/results/2026-11-30-s4/call4_x2
      (models_<key>_128.json from this code beside old_<key>_128.json from the landed code, same GPU)
"""
import json
import sys
from pathlib import Path

MODELS = [("olmoe", "OLMoE-1B-7B"), ("qwen3", "Qwen3-30B-A3B"), ("qwen1.5-moe", "Qwen1.5-MoE-A2.7B"),
          ("deepseek-v2-lite", "DeepSeek-V2-Lite"), ("mixtral", "Mixtral-8x7B")]
ABLATION = [("abl1", "loop experts, eager, SDPA, PyTorch ops (the plain path)"), ("abl2", "+ grouped experts"),
            ("abl3", "+ fused Triton experts"), ("abl4", "+ CUDA graphs"), ("abl5", "+ Triton decode attention"),
            ("abl6", "+ Triton norm/rope/router kernels")]


def model_tables(folder: Path) -> None:
    print("| model | bs | in/out | TTFT ms | ITL ms | out tok/s | floor tok/s | % of floor | transformers tok/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, name in MODELS:
        for length in ("128", "1024"):
            path = folder / f"models_{key}_{length}.json"
            if not path.exists():
                continue
            for r in json.loads(path.read_text())["results"]:
                m, rf, hf = r["metrics"], r["roofline"], r.get("transformers", {})
                hf_tok = f"{hf['output_tok_s']:.1f}" if "output_tok_s" in hf else hf.get("error", "-")
                ratio = f"{r['speedup_vs_transformers']:.1f}x" if "speedup_vs_transformers" in r else "-"
                flag = " (!)" if rf["flags"] else ""
                print(f"| {name} | {r['batch']} | {r['input_len']}/{r['output_len']} | {m['ttft_ms']:.1f} | "
                      f"{m['itl_median_ms']:.2f} | {m['output_tok_s']:,.0f} | {rf['output_tok_s_floor']:,.0f} | "
                      f"{rf['e2e_pct_of_floor']:.0f}%{flag} | {hf_tok} | {ratio} |")


def ablation_table(folder: Path) -> None:
    print("| step | ITL ms | TTFT ms | out tok/s | % of floor |")
    print("|---|---|---|---|---|")
    for key, what in ABLATION:
        path = folder / f"{key}.json"
        if path.exists():
            r = json.loads(path.read_text())["results"][0]
            m = r["metrics"]
            print(f"| {what} | {m['itl_median_ms']:.2f} | {m['ttft_ms']:.1f} | {m['output_tok_s']:,.0f} | "
                  f"{r['roofline']['e2e_pct_of_floor']:.0f}% |")


def before_after(folder: Path) -> None:
    print("| model | bs | before out tok/s | after out tok/s | change | before ITL ms | after ITL ms | after % of floor |")
    print("|---|---|---|---|---|---|---|---|")
    for key, name in MODELS:
        new, old = folder / f"models_{key}_128.json", folder / f"old_{key}_128.json"
        if not (new.exists() and old.exists()):
            continue
        olds = {r["batch"]: r for r in json.loads(old.read_text())["results"]}
        for r in json.loads(new.read_text())["results"]:
            o = olds.get(r["batch"])
            if o is None:                               # a batch size the baseline did not run
                print(f"| {name} | {r['batch']} | - | {r['metrics']['output_tok_s']:,.1f} | - | - | "
                      f"{r['metrics']['itl_median_ms']:.3f} | {r['roofline']['e2e_pct_of_floor']:.0f}% |")
                continue
            a, b = r["metrics"]["output_tok_s"], o["metrics"]["output_tok_s"]
            print(f"| {name} | {r['batch']} | {b:,.1f} | {a:,.1f} | {100 * (a / b - 1):+.1f}% | "
                  f"{o['metrics']['itl_median_ms']:.3f} | {r['metrics']['itl_median_ms']:.3f} | "
                  f"{r['roofline']['e2e_pct_of_floor']:.0f}% |")


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="a results folder holding models_<key>_<len>.json (and old_*.json)")
    p.add_argument("--before-after", action="store_true",
                   help="compare models_<key>_128.json (this code) with old_<key>_128.json (the landed code)")
    a = p.parse_args(argv)
    if not a.folder.is_dir():
        print(f"error: {a.folder} is not a folder", file=sys.stderr)
        return 2
    if a.before_after:
        before_after(a.folder)
        return 0
    model_tables(a.folder)
    print()
    ablation_table(a.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
