"""`python -m minimoe prune`: calibrate, rank, slice, and write a pruned Hugging Face checkpoint.

    python -m minimoe prune --model olmoe-stdlib --method reap --ratio 0.25 --out pruned/      # inter-expert
    python -m minimoe prune --model olmoe-stdlib --method width --ratio 0.25 --out narrow/     # intra-expert
    python -m minimoe prune --model ./ckpt --method frequency --ratio 0.5 --per-layer global \\
        --calibration code.txt --save-stats stats.safetensors --out pruned/
    python -m minimoe prune --model ./ckpt --method gate --ratio 0.5 --calibration stats.safetensors --out p2/

Calibration sources (`--calibration`): `heldout` (models/stdlib-heldout.txt: the text `eval` scores, so
a model calibrated on it is flattered there; pass other text to keep an evaluation honest), a UTF-8
text file (tokenized with the checkpoint's tokenizer), `random` / `random:N` (N random token ids: for
dummy weights, where only the shapes matter), or a statistics file from an earlier `--save-stats`
(one calibration, many ratios). `--method random` needs no calibration.

The same pruning runs in memory for `eval --prune` and `bench.py --prune` (`add_prune_args`,
`apply_prune`): `--prune inter:R | intra:R [--prune-method M] [--prune-per-layer P] [--prune-calibration S]`.
Every check that can fail (method, ratio, groups, output folder, calibration source) runs before the
model is built. The maths is in prune.py, the statistics in calibrate.py, their sources in
calibration_sources.py, the writing in hf_save.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import settings as run_settings
from .calibration_sources import RANDOM_TOKENS, calibration_source, run_calibration
from .cli import add_model_args, check_output_path, out_path
from .config import ModelConfig
from .experts import grouped_problem
from .hf_save import follow_umask, save_checkpoint
from .loader import build_model, open_weights, read_config, resolve, weights_source, with_checkpoint_shapes
from .prune import KINDS, METHODS, NEEDS_NO_CALIBRATION, PER_LAYER, active_bytes, check_expert_counts, \
    kept_width, prune_
from .runtime import UsageError, check_settings, resolve_settings

DEFAULT_TOKENS = 32768     # calibration tokens read from a text (a few seconds for the small models)
SLICES_WHOLE = ("pruning slices whole, unquantized, unsharded experts (a pre-quantized checkpoint's too): prune "
                "first, from the bf16 checkpoint (python -m minimoe prune ... --out DIR), then run DIR with --quant / "
                "--ep / --tp")

# Run settings prune parses only to refuse them (run() says why): calibration is one teacher-forced, unsharded,
# unquantized pass with the checkpoint's own routing; --help leaves them out.
REFUSED = ("router", "top_k", "zipf_s", "skip_threshold", "quant", "quant_lm_head", "ep", "tp", "dispatch",
           "allreduce", *run_settings.SPECULATION)


@dataclass
class PruneRequest:
    kind: str                      # inter | intra
    ratio: float                   # fraction of experts (inter) or of each expert's width (intra) removed
    method: str                    # prune.METHODS[kind]
    per_layer: str = "uniform"     # uniform | global
    calibration: str | None = None  # heldout | random[:N] | a text file | a .safetensors statistics file
    calibration_flag: str = "--calibration"         # how the command line spells it (errors name it)
    per_layer_flag: str = "--per-layer"             # the same for the per-layer policy
    source: object = field(default=None, repr=False)   # calibration_source's answer, read before the build

    def describe(self) -> str:
        return f"{self.kind} {self.ratio:.1%} by {self.method}" + (", global" if self.per_layer == "global" else "")


def make_request(kind: str, ratio: float, method: str | None, per_layer: str, calibration: str | None,
                 flag: str = "--method") -> PruneRequest:
    """Check the words and numbers of a request (UsageError, one line)."""
    if kind not in KINDS:
        raise UsageError(f"pruning kind {kind!r}: choose inter or intra")
    method = method or ("gate" if kind == "inter" else "width")     # the best measured (scripts/prune_quality.py)
    if method not in METHODS[kind]:
        raise UsageError(f"{flag} {method}: {kind}-expert pruning ranks by {' | '.join(METHODS[kind])}")
    if not 0 < ratio < 1:
        raise UsageError(f"{'--prune' if flag == '--prune-method' else '--ratio'}: the pruning ratio must be a fraction "
                         f"between 0 and 1, got {ratio:g}")
    pl_flag = "--prune-per-layer" if flag == "--prune-method" else "--per-layer"
    if per_layer not in PER_LAYER:
        raise UsageError(f"{pl_flag} {per_layer}: choose uniform or global")
    if kind == "intra" and per_layer != "uniform":
        raise UsageError(f"intra-expert pruning keeps one width in every layer: use {pl_flag} uniform")
    if method in NEEDS_NO_CALIBRATION and calibration is not None:
        cal_flag = "--prune-calibration" if flag == "--prune-method" else "--calibration"
        raise UsageError(f"{flag} {method} draws what goes from --seed: it takes no {cal_flag}")
    return PruneRequest(kind, ratio, method, per_layer, calibration, per_layer_flag=pl_flag)


def check_request(req: PruneRequest, cfg: ModelConfig, s, folder=None, limit: int = DEFAULT_TOKENS,
                  runs_pruned: bool = True) -> None:
    """What a ratio does to this model's layers, before it is built (groups, K, nothing removed), the
    settings it cannot be combined with (resolved RunSettings `s`), and the calibration source (read
    now, into req.source: a missing file is an error before the heavy work). runs_pruned: the pruned model
    will run here with `s` (eval / bench --prune; `prune` itself only saves it)."""
    if not cfg.is_moe:
        raise UsageError("pruning needs an MoE model")
    if s.quant != "none" or s.ep * s.tp > 1 or cfg.extra.get("quantization_config"):
        raise UsageError(SLICES_WHOLE)
    top_k = s.top_k
    moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    try:
        if req.kind == "inter":
            check_expert_counts(cfg, {i: cfg.layer_experts(i) for i in moe}, req.ratio, req.per_layer,
                                max(top_k or 0, cfg.top_k))
        else:
            kept = [kept_width(req.ratio, I) for I in {cfg.layer_moe_width(i) for i in moe}]
            grouped = runs_pruned and s.experts == "grouped"
            problem = grouped_problem(kept, cfg.hidden_size, s.torch_dtype) if grouped else None
            if problem:
                raise ValueError(problem + f" (after --prune {req.kind}:{req.ratio:g})")
    except ValueError as e:        # prune.py's messages name prune's own flag; eval and bench spell it --prune-per-layer
        raise UsageError(str(e).replace("--per-layer", req.per_layer_flag)) from None
    if req.calibration and req.method not in NEEDS_NO_CALIBRATION:
        req.source = calibration_source(req.calibration, folder, cfg.vocab_size, limit, s.seed, req.calibration_flag)


# ---- in memory: eval --prune, bench.py --prune ------------------------------------------------------

def add_prune_args(p, calibration_default: str) -> None:
    g = p.add_argument_group("pruning in memory (prune.py; `python -m minimoe prune` saves a checkpoint)")
    g.add_argument("--prune", help="inter:R (drop a fraction R of each layer's experts) | intra:R (narrow "
                                   "every expert's FFN width by R)")
    g.add_argument("--prune-method", help="inter: frequency | gate (default) | reap | random; "
                                          "intra: width (default) | random")
    g.add_argument("--prune-per-layer", default="uniform", help="uniform (default) | global (inter only)")
    g.add_argument("--prune-calibration", help=f"heldout | random[:N] | a text file | a statistics file "
                                               f"(default: {calibration_default})")


def prune_request(args) -> PruneRequest | None:
    """The --prune flags as a checked request, or None when --prune is not given."""
    if args.prune is None:
        if args.prune_method or args.prune_calibration or args.prune_per_layer != "uniform":
            raise UsageError("--prune-method / --prune-per-layer / --prune-calibration need --prune inter:R|intra:R")
        return None
    kind, _, ratio = args.prune.partition(":")
    try:
        r = float(ratio.rstrip("%")) / (100 if ratio.endswith("%") else 1)
    except ValueError:
        raise UsageError(f"--prune {args.prune}: expected inter:R or intra:R with R a fraction, "
                         "e.g. inter:0.25") from None
    req = make_request(kind, r, args.prune_method, args.prune_per_layer, args.prune_calibration, "--prune-method")
    req.calibration_flag = "--prune-calibration"
    return req


def apply_prune(req: PruneRequest, model, folder, seed: int, default_source, top_k: int | None = None):
    """Calibrate (unless the method needs none) and prune `model` in place -> (new ModelConfig, one-line
    note for the output). default_source: () -> calibration_source's answer when no source was given."""
    cfg = model.cfg
    calib, how = None, "no calibration"
    if req.method not in NEEDS_NO_CALIBRATION:
        source = req.source if req.source is not None else \
            calibration_source(req.calibration, folder, cfg.vocab_size, DEFAULT_TOKENS, seed, req.calibration_flag) \
            if req.calibration \
            else default_source()
        calib, how = run_calibration(model, source, flag=req.calibration_flag)
    try:
        res = prune_(model, calib, req.kind, req.method, req.ratio, req.per_layer, seed, top_k)
    except ValueError as e:
        raise UsageError(str(e).replace("--per-layer", req.per_layer_flag)) from None
    return res["cfg"], f"pruned {req.describe()} ({how})"


def prune_for_eval(req: PruneRequest, model, folder, s, ids: torch.Tensor) -> tuple[ModelConfig, str]:
    """eval --prune: calibrate on (the first DEFAULT_TOKENS of) the evaluated text unless told otherwise;
    that flatters the pruned model a little, which the note says."""
    def own_text():
        n = min(ids.numel(), DEFAULT_TOKENS)
        return ids[:n], f"{n} tokens of the evaluated text itself, which is optimistic: pass --prune-calibration FILE"
    return apply_prune(req, model, folder, s.seed, own_text, s.top_k)


def bench_calibration(req: PruneRequest) -> str | None:
    """What bench.py --prune calibrates on (prune_for_bench): the given source, random:N by default, None for a
    method that needs none."""
    if req.method in NEEDS_NO_CALIBRATION:
        return None
    return req.calibration or f"random:{RANDOM_TOKENS}"


def prune_for_bench(req: PruneRequest, model, folder, s, real: bool) -> tuple[ModelConfig, str]:
    """bench.py --prune: calibrate on random prompts unless told otherwise, and say what that means. folder: the
    model's own (its tokenizer, for a text); real: the weights were loaded, not drawn at random."""
    cfg = model.cfg
    cfg, note = apply_prune(req, model, folder, s.seed, lambda: calibration_source(
        "random", None, cfg.vocab_size, RANDOM_TOKENS, s.seed), s.top_k)
    if not real:
        note += "; dummy weights: which experts or neurons go is arbitrary, only the pruned shapes are timed"
    return cfg, note


# ---- the subcommand -----------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune experts (inter) or expert width (intra) and save a checkpoint")
    add_model_args(p)
    p.add_argument("--method", required=True, help="frequency | gate | reap | random (drop experts) | "
                                                   "width (narrow every expert)")
    p.add_argument("--ratio", type=float, required=True, help="fraction removed: of each layer's experts, or of "
                                                             "each expert's width (width)")
    p.add_argument("--per-layer", default="uniform", help="uniform (default): the same count in every "
                                                          "layer (loads in transformers); global: ranked across layers")
    p.add_argument("--calibration", help="heldout | random[:N] | a text file | a statistics file (default: heldout; "
                                         "--method random takes none)")
    p.add_argument("--calib-tokens", type=int, default=DEFAULT_TOKENS, help="tokens of a text used to calibrate (default %(default)s)")
    p.add_argument("--window", type=int, help="calibration window (tokens per sequence; default 512, or the model's "
                   "context if shorter)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward (default %(default)s)")
    p.add_argument("--save-stats", type=out_path, help="also write the calibration statistics here (.safetensors)")
    p.add_argument("--out", required=True, help="new directory for the pruned checkpoint")
    p.add_argument("--json", type=out_path, help="write one JSON object to this path ('-' = stdout, instead of the table)")
    run_settings.add_args(p, hidden=REFUSED)


def _check_flags(args) -> PruneRequest:
    if args.method not in (*METHODS["inter"], "width"):          # random: inter here (eval --prune intra:R picks)
        raise UsageError(f"--method {args.method}: choose {' | '.join(METHODS['inter'])} (drop experts) or width "
                         "(narrow every expert)")
    kind = "intra" if args.method == "width" else "inter"
    if args.method in NEEDS_NO_CALIBRATION and args.save_stats:
        raise UsageError(f"--method {args.method} calibrates nothing, so it writes no --save-stats")
    if args.calibration is None and args.method not in NEEDS_NO_CALIBRATION:
        args.calibration = "heldout"
    req = make_request(kind, args.ratio, args.method, args.per_layer, args.calibration)
    if args.calib_tokens < 1 or (args.window is not None and args.window < 2) or args.batch_size < 1:
        raise UsageError("need --calib-tokens >= 1, --window >= 2 and --batch-size >= 1")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {args.out} exists and is not an empty directory")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"--out {args.out}: " + (f"{parent} is a file" if parent.exists()
                                                    else f"the folder {parent} does not exist"))
    check_output_path(args.json, "--json")
    if args.save_stats and not args.save_stats.endswith(".safetensors"):
        raise UsageError("--save-stats names a .safetensors file")
    check_output_path(args.save_stats, "--save-stats")
    return req


def run(args) -> dict:
    req = _check_flags(args)
    decoding = run_settings.given(args, run_settings.SPECULATION)
    if decoding:
        raise UsageError(f"{decoding[0]} is a decoding setting; prune calibrates teacher-forced (no decoding)")
    if args.quant != "none" or args.ep * args.tp > 1:
        raise UsageError(SLICES_WHOLE)
    s = resolve_settings(run_settings.from_args(args))
    routing = [f for f, on in (("--topk", s.top_k is not None), ("--router", s.router is not None),
                               ("--skip-threshold", bool(s.skip_threshold))) if on]
    if routing:                # they would steer the calibration, yet the saved checkpoint keeps its own routing
        raise UsageError(f"{' / '.join(routing)} {'changes' if len(routing) == 1 else 'change'} the routing that "
                         f"calibration ranks by, and the checkpoint "
                         f"does not record them: prune without them, then run the pruned checkpoint with them")
    cfg, folder = read_config(args.model)
    check_settings(s, cfg)
    if args.window is None:
        args.window = min(512, cfg.max_position_embeddings)
    elif args.window > cfg.max_position_embeddings:
        raise UsageError(f"--window {args.window} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    ckpt = open_weights(args.weights, folder, torch.device("meta"))
    check_request(req, with_checkpoint_shapes(cfg, ckpt) if ckpt is not None else cfg, s, folder, args.calib_tokens,
                  runs_pruned=False)
    source = weights_source(args.weights, folder)
    model, cfg, folder = build_model(args.model, args.weights, dtype=s.torch_dtype, device=s.device, settings=s,
                                     seed=s.seed)
    calib, how = (None, "no calibration") if req.source is None else run_calibration(model, req.source, args.window,
                                                                                      args.batch_size)
    if args.save_stats and calib is not None:
        calib.save(args.save_stats)
        follow_umask(args.save_stats)
    shapes = {i: (m.ffn.experts.n_local, m.ffn.experts.hidden) for i, m in enumerate(model.layers)
              if cfg.is_moe_layer(i)}
    before = active_bytes(model, s.top_k)
    try:
        res = prune_(model, calib, req.kind, req.method, req.ratio, req.per_layer, s.seed, s.top_k)
    except ValueError as e:
        raise UsageError(str(e)) from None
    after = active_bytes(model, s.top_k)
    about = {"source_model": args.model, "weights": source or "dummy",
             **{k: v for k, v in req.__dict__.items() if k != "source" and not k.endswith("_flag")},
             "calibrated": how, "seed": s.seed, "kept": {str(k): v for k, v in res["kept"].items()}}
    _chain(about, source)                           # the tensors' own folder holds an earlier pruning.json
    save_checkpoint(model, res["cfg"], resolve(args.model)[0], str(Path(args.out).expanduser()), folder,
                    {"pruning.json": about}, weights_folder=source)
    layers = {i: {"before": shapes[i], "after": (m.ffn.experts.n_local, m.ffn.experts.hidden)}
              for i, m in enumerate(model.layers) if i in shapes}
    return {"model": args.model, "out": str(args.out), "prune": req.describe(), "kind": req.kind, "calibration": how,
            "weights": about["weights"], "layers": layers, "bytes_before": before, "bytes_after": after,
            "dtype": s.dtype}


def _chain(about: dict, folder) -> None:
    """A checkpoint pruned before (its own pruning.json): keep that record under "previous", and where this run
    removed experts, give "kept" as the original model's ids: the input's experts are the nearest earlier
    expert-removing record's kept ids, in order (a width pruning in between keeps the experts and their order)."""
    prev_path = Path(folder) / "pruning.json" if folder else None
    if prev_path is None or not prev_path.is_file():
        return
    try:
        prev = json.loads(prev_path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{prev_path}: {e}") from None
    about["previous"] = prev
    record = prev
    while isinstance(record, dict) and record.get("kind") != "inter":
        record = record.get("previous")
    if about["kind"] != "inter" or not isinstance(record, dict):
        return
    old = record.get("kept", {})
    for layer, ids in about["kept"].items():
        if layer not in old or max(ids, default=-1) >= len(old[layer]):
            raise UsageError(f"{prev_path} does not describe these weights (layer {layer}'s experts): "
                             "remove it to prune without the original ids")
    about["kept"] = {layer: [old[layer][i] for i in ids] for layer, ids in about["kept"].items()}


def print_summary(out: dict) -> None:
    mb = 1e6
    print(f"# prune {out['model']} ({out['weights']}): {out['prune']}; {out['calibration']}")
    print("layer  experts      width")
    for i, v in out["layers"].items():
        (e0, i0), (e1, i1) = v["before"], v["after"]
        print(f"{i:>5}  {e0:>3} -> {e1:<3}  {i0:>5} -> {i1}")
    b, a = out["bytes_before"], out["bytes_after"]
    (e0, i0), (e1, i1) = (tuple(sum(v[w][j] for v in out["layers"].values()) for j in (0, 1))
                          for w in ("before", "after"))
    removed = f"{1 - e1 / e0:.1%} of the experts" if out["kind"] == "inter" else f"{1 - i1 / i0:.1%} of the width"
    why = ("K experts a layer are read whatever E is, so batch 1 reads as much" if out["kind"] == "inter" else
           "narrower experts: every token reads fewer bytes")
    print(f"removed {removed} (ratios round to whole experts / aligned widths a layer)")
    print(f"weights ({out['dtype']}, as loaded) {b['total'] / mb:.2f} MB -> {a['total'] / mb:.2f} MB; one token reads "
          f"{b['per_token'] / mb:.2f} MB -> {a['per_token'] / mb:.2f} MB ({why})")
    print(f"wrote {out['out']}")
