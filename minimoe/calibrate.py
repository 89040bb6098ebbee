"""Calibration: run a model over a token stream and record, per MoE layer and expert, what pruning needs.

For every routed (token t, expert e) pair of MoE layer l, with w the gate weight the model applies
(after the family's renormalisation and scaling) and a = silu(Wg x) ⊙ (Wu x) the expert's hidden
activation [I], f_e(x) = W2 a its output [D]:

    count[e]       number of tokens routed to e                         -> "frequency"
    gate[e]        Σ w                                                  -> "gate" (summed gate weight)
    reap[e]        Σ w · ||f_e(x)||₂   (/ count: REAP's saliency, the mean over the tokens routed to e;
                                        Lasby et al. 2025, arXiv 2510.13999)
    act[e, j]      Σ (w · a_j)²        (sqrt(act / count) x ||W2[:, j]||₂ is the RMS of what neuron j
                                        adds to the layer's output, w·a_j·W2[:, j]: the output error its
                                        removal causes, first order; for intra-expert pruning)
    ratio_hist[b]  how many slots have w / (the token's top w) in bin b of [0, 1]  (what
                   --skip-threshold beta would drop: NAEE, arXiv 2402.14800)

A forward hook on each `Experts` module sees exactly what the expert path received (x, the weights
and ids the router chose), so the statistics are those of the model as it runs, on any expert path.
The hook recomputes a and f_e(x) per expert segment of the (token, slot) pairs sorted by expert: E
matmuls and one host sync per layer, in any dtype (torch._grouped_mm would be one call but needs
16-byte strides and no float64). Calibration is not the hot path; a saved `Calibration` (safetensors)
serves every ratio and method afterwards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .generate import Generator
from .moe import MoE

HIST_BINS = 200          # resolution of the skip-ratio histogram (beta steps of 0.005)


def moe_layers(model) -> list[tuple[int, MoE]]:
    """(layer index, MoE block) of every MoE layer of a built model."""
    return [(i, layer.ffn) for i, layer in enumerate(model.layers) if isinstance(layer.ffn, MoE)]


@dataclass
class Calibration:
    """Per MoE layer: {"count" [E] int64, "gate" [E], "reap" [E], "act" [E, I] float64, "ratio_hist"
    [HIST_BINS] int64} (expert e = the layer's local expert e), the tokens seen, where they came from."""
    layers: dict = field(default_factory=dict)
    tokens: int = 0
    about: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, model, about: dict | None = None) -> "Calibration":
        dev = model.embed.weight.device
        layers = {}
        for i, moe in moe_layers(model):
            E, I = moe.experts.n_local, moe.experts.hidden
            layers[i] = {"count": torch.zeros(E, dtype=torch.int64, device=dev),
                         "gate": torch.zeros(E, dtype=torch.float64, device=dev),
                         "reap": torch.zeros(E, dtype=torch.float64, device=dev),
                         "act": torch.zeros(E, I, dtype=torch.float64, device=dev),
                         "ratio_hist": torch.zeros(HIST_BINS, dtype=torch.int64, device=dev)}
        return cls(layers, 0, dict(about or {}))

    def observe(self, layer: int, experts, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
        """One call of layer `layer`'s experts: x [T, D], weights/ids [T, K] (ids global; -1 = skipped)."""
        st = self.layers[layer]
        T, K = ids.shape
        E, I = experts.n_local, experts.hidden
        local = ids.reshape(-1) - experts.expert_offset                      # [T*K]
        held = ((local >= 0) & (local < E)).nonzero().squeeze(1)             # host sync: data-dependent size
        e, order = local[held].sort(stable=True)                             # pairs grouped by expert
        pairs = held[order]                                                  # [P] flat (token, slot) ids
        w = weights.reshape(-1)[pairs].float()                               # [P]
        a, y = _expert_activations(experts, x, pairs // K, e)                # [P, I], [P, D]
        st["count"] += torch.bincount(e, minlength=E)
        st["gate"].index_add_(0, e, w.double())
        st["reap"].index_add_(0, e, (w * y.float().norm(dim=-1)).double())
        st["act"].index_add_(0, e, (w[:, None] * a.float()).square().double())
        top = weights.float().amax(-1, keepdim=True)                         # [T, 1]
        ratio = (weights.float() / top.clamp_min(1e-30)).reshape(-1)[pairs]  # [P] in [0, 1]
        st["ratio_hist"] += torch.histc(ratio, bins=HIST_BINS, min=0.0, max=1.0).long()

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """One safetensors file: `layers.{l}.{stat}` tensors, `tokens` and `about` in the metadata."""
        from safetensors.torch import save_file
        tensors = {f"layers.{l}.{k}": v.detach().cpu().contiguous() for l, st in self.layers.items()
                   for k, v in st.items()}
        save_file(tensors, str(path), metadata={"minimoe_calibration": json.dumps(
            {"tokens": self.tokens, "about": self.about})})

    @classmethod
    def load(cls, path, device="cpu") -> "Calibration":
        """Raises ValueError (one line) for a file that is not a minimoe calibration."""
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt", device=str(device)) as f:
                meta = json.loads((f.metadata() or {}).get("minimoe_calibration", "null"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:       # missing, truncated or not safetensors
            raise ValueError(f"{path}: not a readable calibration file ({e})") from None
        if meta is None:
            raise ValueError(f"{path}: a safetensors file, but not a minimoe calibration (no metadata)")
        layers = {}
        for name, t in tensors.items():
            _, l, stat = name.split(".")
            layers.setdefault(int(l), {})[stat] = t
        return cls(layers, meta["tokens"], meta["about"])

    def check_matches(self, model) -> None:
        """Refuse statistics of another model: the MoE layers and their expert counts/widths must agree."""
        want = {i: (m.experts.n_local, m.experts.hidden) for i, m in moe_layers(model)}
        have = {i: tuple(st["act"].shape) for i, st in self.layers.items()}
        if want != have:
            raise ValueError(f"the calibration file describes MoE layers {have} (experts, width), "
                             f"but the model has {want}")


def _expert_activations(experts, x, tokens: torch.Tensor, e: torch.Tensor):
    """Hidden activations a [P, I] and outputs f_e(x) [P, D] of the pairs (tokens[p], local expert e[p]),
    pairs sorted by expert. One matmul pair per expert that has tokens."""
    I = experts.hidden
    a = x.new_empty(tokens.numel(), I)
    y = x.new_empty(tokens.numel(), x.shape[1])
    start = 0
    for ex, n in enumerate(torch.bincount(e, minlength=experts.n_local).tolist()):   # host sync
        if n == 0:
            continue
        rows = slice(start, start + n)
        w13, w2 = experts.expert_weights(ex)
        gate, up = (x[tokens[rows]] @ w13.T).split(I, dim=-1)                # [n, I] each
        a[rows] = F.silu(gate) * up
        y[rows] = a[rows] @ w2.T                                             # [n, D]
        start += n
    return a, y


@torch.no_grad()
def calibrate(model, ids: torch.Tensor, window: int = 512, batch: int = 8, about: dict | None = None,
              desc: str = "calibrate") -> Calibration:
    """Run `model` over the 1-D token stream `ids`, cut into windows of `window` tokens (the last,
    shorter one too), `batch` windows per forward; return the statistics. Progress on stderr."""
    ids = ids.reshape(-1).long()
    if ids.numel() < 1:
        raise ValueError("calibration needs at least one token")
    window = min(window, ids.numel(), model.cfg.max_position_embeddings)
    cut = ids.numel() // window * window
    rows = list(ids[:cut].view(-1, window)) + ([ids[cut:]] if cut < ids.numel() else [])
    calib = Calibration.empty(model, about)
    hooks = [moe.experts.register_forward_hook(
        lambda mod, args, out, layer=i: calib.observe(layer, mod, *args)) for i, moe in moe_layers(model)]
    gens = {}
    try:
        for start in tqdm(range(0, len(rows), batch), desc=desc, unit="batch", leave=False):
            chunk = rows[start:start + batch]
            by_len = {}
            for r in chunk:                      # the tail window is shorter: its own forward
                by_len.setdefault(r.numel(), []).append(r)
            for S, same in by_len.items():
                key = (len(same), S)
                if key not in gens:
                    gens[key] = Generator(model, len(same), S)
                gens[key].reset()
                gens[key].append(torch.stack(same).to(gens[key].device))
    finally:
        for h in hooks:
            h.remove()
    calib.tokens = ids.numel()
    return calib


def calibrate_decode(model, prompts: torch.Tensor, steps: int, about: dict | None = None) -> Calibration:
    """The statistics of the tokens a greedy decode produces, not of a prompt: prompts [B, S] (int64) are prefilled
    unobserved, then `steps` eager decode steps of the B rows are observed (B·steps tokens). Dynamic skipping's
    speed at batch 1 follows the decode steps' routing, which is not the prompt's: on OLMoE's real shapes with
    random weights, a beta that dropped 33.6% of the slots of random-token windows dropped 28.1% of a bench run's
    slots, counted mostly over its prompt (scripts/bench_prune.py, thirty-eighth session). Raises ValueError for
    steps < 1."""
    if steps < 1:
        raise ValueError(f"calibrate_decode needs steps >= 1, got {steps}")
    B, S = prompts.shape
    gen = Generator(model, B, S + steps + 1)
    calib = Calibration.empty(model, about)
    with torch.inference_mode():
        tok = gen.prefill(prompts.to(gen.device))
        hooks = [moe.experts.register_forward_hook(
            lambda mod, args, out, layer=i: calib.observe(layer, mod, *args)) for i, moe in moe_layers(model)]
        try:
            for _ in tqdm(range(steps), desc="calibrate decode", unit="step", leave=False):
                tok = gen.decode(tok)
        finally:
            for h in hooks:
                h.remove()
    calib.tokens = B * steps
    return calib
