"""Guards the read-bandwidth probe (kernels/stream_read.py): each program's partial sum is its slice's sum, at one
tile in flight and at several (UNROLL), so the probe reads every byte once and nothing twice."""
import pytest
import torch

pytest.importorskip("triton")

from minimoe.kernels.stream_read import stream_sum  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("programs,block,unroll,tiles", [(3, 64, 1, 2), (2, 32, 4, 3), (1, 16, 2, 1)])
def test_partial_sums_are_the_slices(programs, block, unroll, tiles):
    n = programs * block * unroll * tiles
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(DEVICE)
    got = stream_sum(x, programs, block=block, unroll=unroll)
    want = x.double().view(programs, -1).sum(1).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_refuses_a_ragged_length():
    with pytest.raises(AssertionError):
        stream_sum(torch.zeros(100, device=DEVICE), 2, block=16, unroll=2)
