"""Guards kernels/head_gemv.py (MLA's absorbed projections at decode): the Triton kernel against a float64
per-head reference, with W contiguous along either axis, strided x and out (q_nope read in place from q, q_lat
written into the query buffer), ragged N and K, and the torch.bmm fallback above MAX_T tokens."""
import pytest
import torch

pytest.importorskip("triton")

from minimoe import ops  # noqa: E402
from minimoe.kernels import head_gemv as hg  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _case(T, H, N, K, k_contiguous, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(T, H, K + 5, generator=g)                      # x: a strided view, as q[..., :nope]
    x = big[..., 2:2 + K].to(DEVICE, dtype)
    if k_contiguous:                                                  # W_uv [H, v, r]: rows are outputs
        w = (torch.randn(H, N, K, generator=g) * K ** -0.5).to(DEVICE, dtype)
    else:                                                             # W_ukᵀ: a transposed view of [H, K, N]
        w = (torch.randn(H, K, N, generator=g) * K ** -0.5).to(DEVICE, dtype).transpose(1, 2)
    out_buf = torch.full((T, H, N + 3), float("nan"), device=DEVICE, dtype=dtype)
    return x, w, out_buf, out_buf[..., :N]


@pytest.mark.parametrize("T,H,N,K", [(1, 16, 512, 128), (1, 16, 128, 512), (2, 3, 37, 70), (1, 1, 1, 1), (2, 5, 64, 9)])
@pytest.mark.parametrize("k_contiguous", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_head_gemv_matches_reference(T, H, N, K, k_contiguous, dtype):
    x, w, out_buf, out = _case(T, H, N, K, k_contiguous, dtype, seed=T * 100 + N + K)
    got = hg.head_gemv(x, w, out)
    ref = torch.einsum("thk,hnk->thn", x.double(), w.double())
    assert got.data_ptr() == out.data_ptr()
    err = ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    assert err <= TOL[dtype], err
    assert torch.isnan(out_buf[..., N:]).all()                      # nothing written past the view
    twin = torch.empty_like(out)
    ops.head_gemv_torch(x, w, twin)
    assert ((twin.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item() <= TOL[dtype]


def test_head_gemv_falls_back_above_max_t_and_checks_shapes(monkeypatch):
    x, w, _, out = _case(hg.MAX_T + 1, 4, 24, 40, True, torch.float32, seed=1)
    launched = []
    monkeypatch.setattr(hg, "_head_gemv_kernel", type("K", (), {"__getitem__": lambda s, g: launched.append(g)})())
    hg.head_gemv(x, w, out)
    assert launched == []
    assert torch.allclose(out, torch.einsum("thk,hnk->thn", x, w), atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        hg.head_gemv(x, w[:, :, :-1], out)
