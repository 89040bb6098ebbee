"""--l2-prefetch: the chunk plan covers the weight once, and the switch is refused where it cannot run (the
prefetch itself, PTX for sm90+, is checked bit for bit on the GPU in tests/test_gpu.py)."""
import random

import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels import l2_prefetch  # noqa: E402
from minimoe.kernels.dense_gemv import dense_gemv  # noqa: E402
from minimoe.loader import read_config  # noqa: E402
from minimoe.runtime import UsageError, check_settings  # noqa: E402
from minimoe.settings import RunSettings  # noqa: E402


def _chunks(nbytes, programs, nt):
    """The (start, size) pairs the kernel issues, program by program, thread by thread (prefetch_share's rule)."""
    c = l2_prefetch.plan(nbytes, programs, nt)
    out = []
    for p in range(programs):
        for i in range(nt):
            start = (p * nt + i) * c
            size = min(max(nbytes - start, 0), c)
            if size:
                out.append((start, size))
    return c, out


@pytest.mark.parametrize("seed", range(6))
def test_plan_covers_the_range_once_in_16_byte_pieces(seed):
    rng = random.Random(seed)
    nbytes = 16 * rng.randint(1, 3_000_000)
    programs, nt = rng.choice([1, 5, 40, 80, 132]), rng.choice([128, 256])
    c, chunks = _chunks(nbytes, programs, nt)
    assert c % 16 == 0 and all(start % 16 == 0 and size % 16 == 0 for start, size in chunks)
    assert sum(size for _, size in chunks) == nbytes                             # once: no gap, no overlap
    assert all(a[0] + a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert c == 16 or programs * nt * (c - 16) < nbytes                         # the smallest such chunk


def test_plan_and_byte_view_refuse_what_the_instruction_cannot_take():
    with pytest.raises(ValueError, match="must be positive"):
        l2_prefetch.plan(0, 4, 128)
    with pytest.raises(ValueError, match="16-byte aligned"):
        l2_prefetch.byte_view(torch.zeros(64))                                   # a CPU tensor
    with pytest.raises(ValueError, match="sm90"):
        dense_gemv(torch.randn(1, 32), torch.randn(8, 32), l2_prefetch=torch.zeros(64))


def test_setting_resolves_and_is_refused_off_a_hopper_gpu():
    assert RunSettings(device="cpu").resolve().l2_prefetch == "off"
    assert RunSettings(device="cpu", l2_prefetch="off").resolve().l2_prefetch == "off"
    with pytest.raises(ValueError, match="--l2-prefetch yes: choose from"):
        RunSettings(device="cpu", l2_prefetch="yes").resolve()
    cfg, _ = read_config("olmoe-tiny")
    with pytest.raises(UsageError, match="--l2-prefetch on .* needs --gemv auto or stream"):
        check_settings(RunSettings(device="cpu", l2_prefetch="on").resolve(), cfg)
