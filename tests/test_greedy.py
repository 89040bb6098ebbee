"""The greedy tail kernel (kernels/greedy.py) against torch.argmax and the engine's non-finite count."""

import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels.greedy import greedy_tail  # noqa: E402
from minimoe.ops import greedy_torch  # noqa: E402  (the PyTorch twin)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])


def _check(logits, chunks=None):
    count = torch.zeros((), dtype=torch.int64, device=logits.device)
    tok = greedy_tail(logits, count, chunks=chunks)
    assert tok.dtype == torch.int64 and tok.shape == logits.shape[:1]
    ref_count = torch.zeros((), dtype=torch.int64, device=logits.device)
    ref = greedy_torch(logits.float(), ref_count)
    assert torch.equal(tok, logits.argmax(-1)), (tok, logits.argmax(-1))
    assert torch.equal(tok, ref)
    assert int(count) == int(ref_count) == int((~torch.isfinite(logits.float())).any(-1).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,V,chunks", [(1, 50304, None), (3, 1000, None), (2, 1, None), (1, 1025, 2),
                                        (4, 777, 7), (1, 4096, 128), (5, 3000, 1)])
def test_greedy_tail_equals_argmax(B, V, chunks, dtype):
    g = torch.Generator().manual_seed(B * 7919 + V)
    logits = torch.randn(B, V, generator=g).to(dtype).to(DEVICE)
    _check(logits, chunks)


def test_greedy_tail_writes_into_out():
    """out=: the tokens land in the given buffer (the decode graph's own input), nothing else is allocated for them;
    a buffer of the wrong shape or dtype is refused."""
    logits = torch.randn(3, 3000, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out = torch.full((3,), -1, dtype=torch.int64, device=DEVICE)
    count = torch.zeros((), dtype=torch.int64, device=DEVICE)
    assert greedy_tail(logits, count, out=out) is out
    assert torch.equal(out, logits.argmax(-1))
    ref_out = torch.full((3,), -1, dtype=torch.int64, device=DEVICE)
    assert greedy_torch(logits, torch.zeros((), dtype=torch.int64, device=DEVICE), out=ref_out) is ref_out
    assert torch.equal(ref_out, out)
    with pytest.raises(AssertionError):
        greedy_tail(logits, count, out=torch.zeros(3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(AssertionError):
        greedy_tail(logits, count, out=torch.zeros(2, dtype=torch.int64, device=DEVICE))


def test_greedy_tail_ties_nan_inf_and_strides():
    V = 2000
    x = torch.zeros(6, V, device=DEVICE)
    x[0, 1500] = x[0, 7] = x[0, 1999] = 3.0          # ties across chunks: the first index wins
    x[1, 10] = float("nan")                           # a NaN beats everything, even +inf
    x[1, 5] = float("inf")
    x[2, :] = float("-inf")                           # all -inf: index 0, counted
    x[3, 600] = float("inf")                          # +inf wins, counted
    x[4, 1200], x[4, 300] = float("nan"), float("nan")  # the first NaN
    x[5, 1999] = 1.0                                  # the last index
    _check(x, chunks=4)
    _check(x)
    wide = torch.randn(3, V + 17, device=DEVICE)      # a row stride that is not V
    _check(wide[:, :V])


def test_greedy_tail_accumulates_and_handles_empty():
    count = torch.full((), 5, dtype=torch.int64, device=DEVICE)
    x = torch.randn(3, 300, device=DEVICE)
    x[1, 3] = float("inf")
    greedy_tail(x, count)
    assert int(count) == 6
    assert greedy_tail(torch.empty(0, 10, device=DEVICE), count).shape == (0,)
    with pytest.raises(AssertionError):
        greedy_tail(x.t(), count)                     # vocabulary not unit-stride


def test_one_launch_tail_equals_two(monkeypatch):
    """greedy.ONE_LAUNCH: pass 2 in each row's last pass-1 program (an arrival counter) gives the two launches'
    tokens and count on ties, NaN, inf, all -inf rows, one chunk and many, and leaves the counters zeroed; without
    counters it keeps the two launches."""
    from minimoe.kernels import greedy
    V = 2000
    x = torch.randn(6, V, device=DEVICE)
    x[0, 1500] = x[0, 7] = x[0, 1999] = 9.0
    x[1, 10], x[1, 5] = float("nan"), float("inf")
    x[2, :] = float("-inf")
    x[3, 600] = float("inf")
    monkeypatch.setattr(greedy, "ONE_LAUNCH", True)
    counters = torch.zeros(8, dtype=torch.int32, device=DEVICE)
    for chunks in (None, 1, 4, 7):
        for rows in (x, x[:1], x[2:4]):
            count, ref_count = (torch.zeros((), dtype=torch.int64, device=DEVICE) for _ in range(2))
            tok = greedy_tail(rows, count, chunks=chunks, counters=counters)
            ref = greedy_torch(rows, ref_count)
            assert torch.equal(tok, ref) and int(count) == int(ref_count), chunks
            assert not counters.any(), "counters left zeroed"
    launches = []
    real = greedy._argmax_final_kernel
    monkeypatch.setattr(greedy, "_argmax_final_kernel", type("K", (), {
        "__getitem__": lambda self, grid: (launches.append(grid), real[grid])[1]})())
    greedy_tail(x, torch.zeros((), dtype=torch.int64, device=DEVICE), counters=counters)
    assert launches == []                                          # one launch
    greedy_tail(x, torch.zeros((), dtype=torch.int64, device=DEVICE))
    assert len(launches) == 1                                      # no counters: the two launches
