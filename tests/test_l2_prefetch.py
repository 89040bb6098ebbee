"""The L2 prefetch plan: its byte-range tables (CPU) and, on an sm90+ GPU, that it changes no value."""
import pytest
import torch

from minimoe import l2_prefetch
from minimoe.kernels.l2_prefetch import BLOCK, chunk_table


def _covered(addr, size):
    """The set of 16-byte blocks a table asks for."""
    out = set()
    for a, s in zip(addr.tolist(), size.tolist()):
        assert a % 16 == 0 and s % 16 == 0 and s > 0
        out.update(range(a // 16, (a + s) // 16))
    return out


@pytest.mark.parametrize("chunk", [16, 48, 1024, 1 << 20])
def test_chunk_table_covers_each_tensor_once(chunk):
    g = torch.Generator().manual_seed(chunk)
    buf = torch.empty(5000, dtype=torch.bfloat16)
    other = torch.empty(int(torch.randint(1, 3000, (1,), generator=g)), dtype=torch.float32)
    views = [buf[:1000], buf[700:2500], buf[4000:4001], other]          # overlapping views, an odd 2-byte tail
    addr, size = chunk_table(views, chunk, "cpu")
    assert addr.dtype == torch.int64 and size.dtype == torch.int32 and addr.numel() % BLOCK == 0
    assert int(size.max()) <= chunk
    want = set()
    for t in views:
        lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        want.update(range(lo // 16, -(-hi // 16)))
    assert _covered(addr, size) == want
    # no chunk asked twice except the padding (copies of the last chunk)
    pairs = list(zip(addr.tolist(), size.tolist()))
    real = len(set(pairs))
    assert pairs[real:] == [pairs[real - 1]] * (len(pairs) - real)


def test_chunk_table_refuses_bad_input():
    t = torch.empty(64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        chunk_table([t], 100, "cpu")
    with pytest.raises(ValueError, match="not contiguous"):
        chunk_table([t.t()], 1024, "cpu")
    with pytest.raises(ValueError, match="no bytes"):
        chunk_table([t[:0]], 1024, "cpu")


def test_plan_hooks_do_nothing_off_gpu(monkeypatch):
    """On the CPU the hooks are installed and stay idle at every MODE: the same tokens as without them."""
    from minimoe.generate import Generator
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(experts="grouped", device="cpu").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.float32, device="cpu", settings=s)
    prompt = torch.randint(0, cfg.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))

    def run():
        gen = Generator(model, 1, 32)
        tok = gen.prefill(prompt)
        return [tok] + [tok := gen.decode(tok) for _ in range(4)]
    before = run()
    plan = l2_prefetch.install(model)
    assert plan.tables == {}            # CPU weights: nothing to prefetch
    monkeypatch.setattr(l2_prefetch, "MODE", "both")
    assert [t.tolist() for t in run()] == [t.tolist() for t in before]


@pytest.mark.gpu
def test_plan_same_tokens_on_gpu(monkeypatch):
    """Eager and graphed decode with the prefetches on give the tokens of MODE off (a prefetch is a hint)."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("cp.async.bulk.prefetch needs sm90+")
    from minimoe.generate import Generator
    from minimoe.graphs import enable_graphs
    from minimoe.loader import build_model
    from minimoe.settings import RunSettings
    s = RunSettings(experts="fused", device="cuda").resolve()
    model, cfg, _ = build_model("olmoe-tiny", "dummy", dtype=torch.bfloat16, device="cuda", settings=s)
    plan = l2_prefetch.install(model)
    assert plan.tables and all(k[0] in ("o", "in") for k in plan.tables)
    prompt = torch.randint(0, cfg.vocab_size, (1, 6), device="cuda", generator=torch.Generator("cuda").manual_seed(1))

    def run(graphs):
        gen = Generator(model, 1, 32)
        if graphs:
            enable_graphs(gen)
        tok = gen.prefill(prompt)
        return [tok.tolist()] + [(tok := gen.decode(tok)).tolist() for _ in range(6)]
    ref = run(False)
    for mode in ("o", "next", "both"):
        monkeypatch.setattr(l2_prefetch, "MODE", mode)
        assert run(False) == ref and run(True) == ref
