"""One model's training run: batches, schedule, mixed precision and resumable state, nothing clever.

**Batches are a pure function of (seed, step).** The train tokens are one stream (documents joined by
EOT); an epoch is a seeded permutation of its `seq_len + 1`-token chunks, shifted by a per-epoch
offset so chunk edges move. Batch `step` is therefore the same whether the run was interrupted or
not, and a resumed run draws exactly the batches the uninterrupted one would have.

**Schedule.** Linear warmup, then a cosine from `lr` to `lr * min_lr_ratio` (Loshchilov & Hutter
2017) over `steps_total` steps. A run slower than planned would be cut by its time budget at a high
rate, so the schedule's clock is max(step, elapsed / budget * steps_total): behind plan, it anneals
by time and still ends low; on plan, the rate is a function of the step alone.
`stop_step` ends a run early without changing the schedule (a long run in pieces).

**Precision** is one switch (`PRECISIONS`): `fp32` (the CPU path); `autocast` (fp32 weights, bf16
matmuls: the plain GPU path); `bf16` (weights in bf16 inside the model, fp32 master copies that
AdamW updates: Micikevicius et al. 2018). `bf16` exists because transformers' `grouped_mm` experts
call `torch._grouped_mm`, whose fast kernel wants bf16 *weights*, which autocast does not give.
Measured on an H200 (olmoe-stdlib, 64 x 512 tokens a step, alone): bf16 + grouped_mm 22 steps/s,
autocast + grouped_mm 13 (an fp32 fallback), eager experts (a loop over experts) 3.5.

**State** (`<work>/<name>/`): `state.safetensors` (fp32 master weights + RNG states), `optim.pt`
(AdamW moments; read back with `torch.load(weights_only=True)`, our own file only), `state.json`
(step, tokens, elapsed time, loss history), all three stamped with the step and checked on load.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

PRECISIONS = ("fp32", "autocast", "bf16")


@lru_cache(maxsize=4)
def epoch_order(n_chunks: int, seed: int, epoch: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """The epoch's chunk permutation (kept on `device`: batches are then cut with no host copy) and shift."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_chunks, generator=gen)
    return perm.to(device), int(torch.randint(0, 1 << 20, (1,), generator=gen))


def batch_at(tokens: torch.Tensor, step: int, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """Rows `step*batch ... +batch` of the seeded epoch orders: LongTensor [B, S+1] on tokens' device."""
    width = seq_len + 1
    n_chunks = (tokens.numel() - width) // width          # one chunk of room for the epoch's shift
    parts, g, end = [], step * batch, (step + 1) * batch
    while g < end:                                        # a batch may straddle two epochs
        epoch, i = divmod(g, n_chunks)
        take = min(end - g, n_chunks - i)
        perm, shift = epoch_order(n_chunks, seed, epoch, tokens.device)
        parts.append(perm[i:i + take] * width + shift % width)
        g += take
    index = torch.cat(parts)[:, None] + torch.arange(width, device=tokens.device)          # [B, S+1]
    return tokens[index].long()


def lr_at(step: int, elapsed: float, cfg) -> float:
    """Warmup then cosine, on a clock that is the step, or the step the elapsed share of the time budget
    stands for when that is further: on plan, the rate depends on the step alone (reproducible)."""
    clock = max(step, elapsed / cfg.time_budget_s * cfg.steps_total)
    if clock < cfg.warmup:
        return cfg.lr * (clock + 1) / cfg.warmup
    progress = min((clock - cfg.warmup) / max(cfg.steps_total - cfg.warmup, 1), 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def cast_params(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters only: `model.to(dtype)` would also round the RoPE frequencies (an fp32 buffer that
    from_pretrained keeps in fp32), and the model would then differ from its reloaded checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(dtype)
    return model


class Precision:
    """Where weights live and in which dtype the forward runs (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, mode: str, device: torch.device):
        if mode not in PRECISIONS:
            raise ValueError(f"precision {mode!r} not in {PRECISIONS}")
        if mode == "autocast" and device.type != "cuda":
            raise ValueError(f"precision 'autocast' is the CUDA path; use fp32 or bf16 on {device.type}")
        self.mode, self.device = mode, device
        self.names = [n for n, _ in model.named_parameters()]
        self.model_params = list(model.parameters())
        if mode == "bf16":     # fp32 copies of the initial weights first, then the model goes bf16
            self.master = [p.detach().float().clone().requires_grad_(True) for p in self.model_params]
            cast_params(model, torch.bfloat16)
        else:
            self.master = self.model_params

    def autocast(self):
        return torch.autocast("cuda", torch.bfloat16) if self.mode == "autocast" else nullcontext()

    def step(self, opt: torch.optim.Optimizer, clip: float) -> torch.Tensor:
        """Gradients to the master copies, clip, AdamW step, copy back; the norm stays on device."""
        if self.mode == "bf16":
            for m, p in zip(self.master, self.model_params):
                m.grad, p.grad = p.grad.float(), None
        norm = torch.nn.utils.clip_grad_norm_(self.master, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if self.mode == "bf16":
            with torch.no_grad():
                torch._foreach_copy_(self.model_params, self.master)
        return norm

    def load_master(self, tensors: dict) -> None:
        with torch.no_grad():
            for name, m in zip(self.names, self.master):
                m.copy_(tensors[f"param.{name}"])
            if self.mode == "bf16":
                torch._foreach_copy_(self.model_params, self.master)


def make_optimizer(prec: Precision, cfg) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); weight decay on matrices (incl. stacked experts), none on norms."""
    decay = [m for m in prec.master if m.ndim >= 2]
    rest = [m for m in prec.master if m.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = prec.device.type == "cuda"              # one kernel per step instead of one per tensor
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def save_state(folder: Path, prec: Precision, opt, meta: dict) -> None:
    """Write state files (each through a temporary name), state.json last: it commits the step."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{n}": m.detach().float().cpu().contiguous() for n, m in zip(prec.names, prec.master)}
    tensors["rng.cpu"] = torch.get_rng_state()
    if prec.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(prec.device)
    stamp = {"step": str(meta["step"])}
    save_file(tensors, folder / "state.safetensors.tmp", metadata=stamp)
    os.replace(folder / "state.safetensors.tmp", folder / "state.safetensors")
    torch.save({"step": meta["step"], "optimizer": opt.state_dict()}, folder / "optim.pt.tmp")
    os.replace(folder / "optim.pt.tmp", folder / "optim.pt")
    (folder / "state.json.tmp").write_text(json.dumps(meta))
    os.replace(folder / "state.json.tmp", folder / "state.json")


def load_state(folder: Path, prec: Precision, opt) -> dict | None:
    """The saved meta after restoring weights, optimizer and RNG; None when there is no complete state."""
    if not (folder / "state.json").exists():
        return None
    from safetensors import safe_open
    meta = json.loads((folder / "state.json").read_text())
    with safe_open(folder / "state.safetensors", "pt") as f:
        stamped = int(f.metadata()["step"])
    optim = torch.load(folder / "optim.pt", map_location=prec.device, weights_only=True)
    if not stamped == optim["step"] == meta["step"]:
        raise RuntimeError(f"{folder}: state files disagree on the step ({stamped}, {optim['step']}, "
                           f"{meta['step']}); delete the folder to start over")
    tensors = load_file(folder / "state.safetensors")
    wrong = [n for n, m in zip(prec.names, prec.master) if tensors.get(f"param.{n}", m).shape != m.shape]
    if wrong or len(tensors) < len(prec.names):
        raise RuntimeError(f"{folder} holds another model (different shapes: {wrong[:3]}); delete it to start over")
    prec.load_master(tensors)
    opt.load_state_dict(optim["optimizer"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and prec.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], prec.device)
    return meta


def train_step(model, prec: Precision, opt, batch: torch.Tensor, moe: bool, cfg) -> torch.Tensor:
    """Forward, loss (next-token cross-entropy + the router's load-balancing loss for MoE classes,
    weighted by the config's router_aux_loss_coef), backward, clipped AdamW step. Returns the LM loss."""
    with prec.autocast():
        out = model(input_ids=batch[:, :-1], use_cache=False, **({"output_router_logits": True} if moe else {}))
    lm = F.cross_entropy(out.logits.float().flatten(0, 1), batch[:, 1:].flatten())      # [B*S, V] vs [B*S]
    loss = lm + model.config.router_aux_loss_coef * out.aux_loss if moe else lm
    loss.backward()
    prec.step(opt, cfg.clip)
    return lm.detach()


def train_steps(model, prec: Precision, opt, data: dict, cfg, meta: dict, folder: Path,
                evaluate_fn, bar) -> dict:
    """The loop: runs to cfg.steps_total (or stop_step) or the time budget; reads the loss every
    cfg.log_every steps (the only host syncs), evaluates every cfg.eval_every steps, saves state every
    cfg.save_every_s seconds and at the end. `meta` (step, tokens, elapsed, history, evals) is updated."""
    start, last_save = time.time() - meta["elapsed"], time.time()
    loss_sum, since_log = torch.zeros((), device=prec.device), 0
    limit = min(cfg.steps_total, cfg.stop_step or cfg.steps_total)

    def log_point(lr: float) -> None:
        nonlocal since_log
        train_loss = loss_sum.item() / since_log                 # host sync
        loss_sum.zero_()
        since_log, meta["elapsed"] = 0, time.time() - start
        meta["history"].append(dict(step=meta["step"], tokens=meta["tokens"], loss=train_loss, lr=lr,
                                    elapsed_s=round(meta["elapsed"], 2)))
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{meta['tokens'] / max(meta['elapsed'], 1e-9):.3g}")

    lr = cfg.lr
    while meta["step"] < limit and time.time() - start < cfg.time_budget_s:
        lr = lr_at(meta["step"], time.time() - start, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = batch_at(data["train"], meta["step"], cfg.batch, cfg.seq_len, cfg.seed)      # [B, S+1]
        loss_sum += train_step(model, prec, opt, batch, data["moe"], cfg)
        meta["step"], meta["tokens"], since_log = meta["step"] + 1, meta["tokens"] + batch[:, 1:].numel(), since_log + 1
        bar.update(1)
        if meta["step"] % cfg.log_every == 0:
            log_point(lr)
        if meta["step"] % cfg.eval_every == 0:
            meta["evals"].append(dict(step=meta["step"], tokens=meta["tokens"], loss=evaluate_fn()))
        if time.time() - last_save > cfg.save_every_s:
            meta["elapsed"] = time.time() - start
            save_state(folder, prec, opt, meta)
            last_save = time.time()
    if since_log:
        log_point(lr)
    if prec.device.type == "cuda":
        torch.cuda.synchronize(prec.device)
    meta["elapsed"] = time.time() - start
    save_state(folder, prec, opt, meta)
    return meta
