"""Guards `--fold-attn-norm on` under a tensor-parallel plan (norm_fusion.py, tensor_parallel.py): two processes
(gloo, Triton interpreted, fp32) decode one sequence with the attention's residual add + RMSNorm inside the q/k/v
GEMV of each rank's head shard, and give one process's greedy tokens and logits within fp32 rounding. The plan's
all-reduce hook on the attention reads only its output, so the fold runs (Mixtral, Qwen3-MoE; and Mixtral's norm inside
--fuse-rope's q/k/v GEMV + rope kernel with norm_fusion.WITH_ROPE); OLMoE's distributed q/k norm hooks the q/k/v
projection itself, so its layers keep the unfused path and still match."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("triton")

from conftest import greedy_and_logits, rel_err  # noqa: E402
from minimoe import norm_fusion, rope_fusion  # noqa: E402
from minimoe.loader import build_model  # noqa: E402
from minimoe.placement import Placement  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402

# name -> (card, --fuse-rope, norm_fusion.WITH_ROPE, whether the fold runs under TP2)
CASES = {"mixtral-tiny": ("mixtral-tiny", "off", False, True), "qwen3-moe-tiny": ("qwen3-moe-tiny", "off", False, True),
         "olmoe-tiny": ("olmoe-tiny", "off", False, False), "mixtral-tiny-rope": ("mixtral-tiny", "on", True, True)}
S, STEPS, SEED = 5, 3, 11
TOL = 1e-5                                    # float32, relative to the largest logit


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    runs, rope_runs = [], []
    real, real_rope = norm_fusion.run, rope_fusion.run
    norm_fusion.run = lambda *a, **k: runs.append(1) or real(*a, **k)
    rope_fusion.run = lambda *a, **k: (rope_runs.append(1) if k.get("norm") else None) or real_rope(*a, **k)
    results = {}
    for name, (card, fuse_rope, with_rope, _) in CASES.items():
        norm_fusion.WITH_ROPE = with_rope
        plain = RunSettings(device="cpu", dtype="fp32")
        ref, cfg, _ = build_model(card, "dummy", dtype=torch.float32, device="cpu", settings=plain, seed=SEED,
                                  prepare=lambda m: Placement())          # one process, the ranks' pieces whole
        prompt = torch.randint(0, cfg.vocab_size, (1, S), generator=torch.Generator().manual_seed(SEED))
        want_tokens, want_logits = greedy_and_logits(ref, prompt, STEPS)
        s = RunSettings(device="cpu", dtype="fp32", ops="triton", fold_attn_norm="on", fuse_rope=fuse_rope, tp=world,
                        gemv="stream")
        model = build_model(card, "dummy", dtype=torch.float32, device="cpu", settings=s, seed=SEED)[0]
        runs.clear()
        rope_runs.clear()
        tokens, logits = greedy_and_logits(model, prompt, STEPS)
        results[name] = {"err": rel_err(logits, want_logits), "tokens": bool(torch.equal(tokens, want_tokens)),
                         "folds": len(runs), "layers": cfg.n_layers,
                         "rope_folds": len(rope_runs)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp_fold")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, str(out)), nprocs=2, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fold_under_tp2_matches_one_process(case, tp2):
    for res in (r[case] for r in tp2):
        assert res["tokens"] and res["err"] <= TOL, res
        if CASES[case][3]:      # every layer of every one-token decode step (greedy_and_logits runs several)
            assert res["folds"] >= res["layers"] * STEPS and res["folds"] % res["layers"] == 0, res
            assert res["rope_folds"] == (res["folds"] if CASES[case][2] else 0), res     # WITH_ROPE: every fold
        else:
            assert res["folds"] == 0, res


def test_the_plans_all_reduce_hook_reads_only_the_output():
    """The attention's TP all-reduce hook is marked output-only; any other hook on the attention (calibration's) keeps
    the fold off, as do hooks on the q/k/v projection or the norm."""
    from minimoe import tensor_parallel
    model = build_model("mixtral-tiny", "dummy", dtype=torch.float32, device="cpu",
                        settings=RunSettings(device="cpu", dtype="fp32").resolve(), seed=1)[0]
    attn = model.layers[0].attn
    h = attn.register_forward_hook(tensor_parallel._all_reduce(lambda x: x))
    assert not norm_fusion._input_hooked(attn)
    h2 = attn.register_forward_hook(lambda m, a, o: o)
    assert norm_fusion._input_hooked(attn)
    h2.remove()
    h3 = attn.register_forward_pre_hook(lambda m, a: None)
    assert norm_fusion._input_hooked(attn)
    h3.remove()
    h.remove()
    assert not norm_fusion._input_hooked(attn)
