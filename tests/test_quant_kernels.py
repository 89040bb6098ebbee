"""Guards the quantized fused-MoE and dense kernels (int8, int4 with and without zero points, fp8 per row and in
blocks, bitsandbytes' nf4 / LLM.int8 bytes) against dequantize-then-matmul in float64, on awkward shapes."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from minimoe import qweights as Q  # noqa: E402
from minimoe.kernels.fused_moe_quant import fused_moe_quant  # noqa: E402
from minimoe.kernels.fused_moe_quant_small import quant_gemv  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
try:
    from minimoe import qbnb
    import bitsandbytes  # noqa: F401
    HAVE_BNB = True
except ImportError:
    HAVE_BNB = False

FORMATS = {   # name -> quantize [E, N, K] (small groups and blocks keep the interpreter quick; 128 is tested too)
    "int8": Q.quantize_int8,
    "int4": lambda w: Q.quantize_int4(w, 32),
    "int4-g128": lambda w: Q.quantize_int4(w, 128),
    "int4-zero": lambda w: Q.quantize_int4(w, 32, zero_point=True),
    "fp8": Q.quantize_fp8,
    "fp8-block": lambda w: Q.quantize_fp8(w, 32),
    "nf4": lambda w: qbnb.quantize_nf4(w),
    "bnb-int8": lambda w: qbnb.quantize_bnb_int8(w),
}
BNB = ("nf4", "bnb-int8")
D, I = 64, 40          # I is not a multiple of 32, 64 or 128: the codes are padded and the padding must not count


def fmt_param(names):
    return [pytest.param(n, marks=pytest.mark.skipif(n in BNB and not HAVE_BNB, reason="bitsandbytes not installed"))
            for n in names]


def make(fmt, E, gen, dtype=torch.float32, d=D, i=I):
    w13 = torch.randn(E, 2 * i, d, generator=gen) / d ** 0.5
    w2 = torch.randn(E, d, i, generator=gen) / i ** 0.5
    q13, q2 = FORMATS[fmt](w13.to(DEVICE)), FORMATS[fmt](w2.to(DEVICE))
    return q13, q2


def reference(x, q13, q2, ids, weights, offset=0, w8a8=False):
    """float64 loop over the dequantized experts (w8a8: fp8 activations per token, as the tensor-core path)."""
    w13, w2 = q13.dequantize().double().cpu(), q2.dequantize().double().cpu()
    x, ids, weights = x.cpu().float(), ids.cpu(), weights.double().cpu()
    I_ = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for e in range(w13.shape[0]):
        tok, slot = torch.where(ids == e + offset)
        if tok.numel() == 0:
            continue
        xs = x[tok]
        if w8a8:
            xs = fake_quant(xs, q13.group)
        gate, up = (xs.double() @ w13[e].T).split(I_, dim=-1)
        h = torch.nn.functional.silu(gate) * up
        if w8a8:
            h = fake_quant(h.float(), q2.group).double()
        out.index_add_(0, tok, weights[tok, slot, None] * (h @ w2[e].T))
    return out


def fake_quant(x, group):
    q, s = Q.quant_rows_fp8(x, group)
    return q.float() * (s if group == 0 else s.repeat_interleave(group, 1)[:, :x.shape[1]])


def routing(T, K, n_ids, gen, kind="random"):
    if kind == "random":
        ids = torch.stack([torch.randperm(n_ids, generator=gen)[:K] for _ in range(T)])
    else:                                             # every slot on one expert: all the others are empty
        ids = torch.full((T, K), 1)
    return ids.to(DEVICE), torch.rand(T, K, generator=gen).to(DEVICE)


def check(out, ref, tol):
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()
    assert err < tol, err


@pytest.mark.parametrize("fmt", fmt_param(FORMATS))
def test_decode_gemv_path_equals_dequantize_then_matmul(fmt):
    """T = 1 over 60 experts (fused_moe.plan picks the GEMVs): only 4 experts are touched."""
    gen = torch.Generator().manual_seed(1)
    q13, q2 = make(fmt, 60, gen)
    x = torch.randn(1, D, generator=gen).to(DEVICE)
    ids, w = routing(1, 4, 60, gen)
    check(fused_moe_quant(x, q13, q2, ids, w), reference(x, q13, q2, ids, w), 1e-5)


@pytest.mark.parametrize("fmt", fmt_param(FORMATS))
def test_aligned_tensor_core_path_equals_its_reference(fmt):
    """9 tokens x 2 of 6 experts: the aligned GEMMs; fp8 quantizes activations per token (W8A8)."""
    gen = torch.Generator().manual_seed(2)
    q13, q2 = make(fmt, 6, gen)
    x = torch.randn(9, D, generator=gen).to(DEVICE)
    ids, w = routing(9, 2, 6, gen)
    w8a8 = fmt.startswith("fp8")
    out = fused_moe_quant(x, q13, q2, ids, w)
    check(out, reference(x, q13, q2, ids, w, w8a8=w8a8), 1e-5)
    if w8a8:    # and against the W8A16 oracle, within what fp8 activations cost
        check(out, reference(x, q13, q2, ids, w), 0.1)


@pytest.mark.parametrize("fmt,variant", [("int4-zero", "small"), ("fp8-block", "aligned"), ("int8", "aligned")])
def test_foreign_skipped_and_empty_experts_add_exactly_zero(fmt, variant):
    """Expert parallelism (global ids 4..9 held here), skipped slots (-1) and every token on one expert."""
    gen = torch.Generator().manual_seed(3)
    q13, q2 = make(fmt, 6, gen)
    x = torch.randn(3, D, generator=gen).to(DEVICE)
    ids, w = routing(3, 3, 12, gen)
    ids[0, 0], ids[2, 1] = -1, -1
    cfg = {"variant": variant}
    ref = reference(x, q13, q2, ids, w, offset=4, w8a8=fmt == "fp8-block" and variant == "aligned")
    check(fused_moe_quant(x, q13, q2, ids, w, expert_offset=4, config=cfg), ref, 1e-5)
    ids1, w1 = routing(3, 2, 6, gen, kind="one")
    ref1 = reference(x, q13, q2, ids1, w1, w8a8=fmt == "fp8-block" and variant == "aligned")
    check(fused_moe_quant(x, q13, q2, ids1, w1, config=cfg), ref1, 1e-5)
    none = torch.full((3, 2), 20, device=DEVICE)                                  # no slot is ours
    assert torch.equal(fused_moe_quant(x, q13, q2, none, w1, config=cfg), torch.zeros_like(x))


def test_half_precision_activations_and_no_tokens():
    gen = torch.Generator().manual_seed(4)
    q13, q2 = make("int4", 8, gen)
    x = torch.randn(3, D, generator=gen).to(DEVICE, torch.float16)
    ids, w = routing(3, 2, 8, gen)
    out = fused_moe_quant(x, q13, q2, ids, w)
    assert out.dtype == torch.float16
    check(out, reference(x, q13, q2, ids, w), 2e-3)
    assert fused_moe_quant(x[:0], q13, q2, ids[:0], w[:0]).shape == (0, D)


@pytest.mark.parametrize("fmt", fmt_param(["int8", "int4-g128", "int4-zero", "fp8", "fp8-block", "nf4", "bnb-int8"]))
def test_dense_gemv_equals_dequantized_linear(fmt):
    """A dense quantized layer at decode sizes: N = 50 (not a multiple of the tiles), K = 72 (padded)."""
    gen = torch.Generator().manual_seed(5)
    w = FORMATS[fmt](torch.randn(1, 50, 72, generator=gen).to(DEVICE))
    for T in (1, 3):
        x = torch.randn(T, 72, generator=gen).to(DEVICE)
        ref = x.double().cpu() @ w.dequantize()[0].double().cpu().T
        check(quant_gemv(x, w), ref, 1e-5)


def test_block_k_must_hold_whole_scale_groups():
    gen = torch.Generator().manual_seed(6)
    q13, q2 = make("int4", 4, gen)
    x = torch.randn(1, D, generator=gen).to(DEVICE)
    ids, w = routing(1, 1, 4, gen)
    with pytest.raises(AssertionError, match="scale group"):
        fused_moe_quant(x, q13, q2, ids, w, config={"variant": "small", "small": {"BLOCK_K": 16}})


def test_tuned_tables_apply_to_their_formats_and_sizes(tmp_path, monkeypatch):
    """A tuned table (scripts/tune_fused_moe_quant.py, vLLM's dtype=fp8_w8a8 / int8_w8a16 / int4_w4a16 names) gives
    the config of the bucket nearest T, only within 2x of its buckets, only for its format (int4 in groups of 128;
    never fp8 blocks or bitsandbytes codes), and not with USE_TUNED off; elsewhere the heuristic stands."""
    import json
    from minimoe.kernels import fused_moe_quant as FQ, moe_configs
    E, I, D, K = 8, 40, 64, 2
    cfg16 = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 256, "GROUP_M": 1, "num_warps": 4, "num_stages": 3}
    cfg64 = dict(cfg16, BLOCK_M=32)
    name = moe_configs.config_file_name(E, I, D, K, FQ.TUNED_DTYPE["fp8"])
    (tmp_path / name).write_text(json.dumps({"configs": {"16": cfg16, "64": cfg64}}))
    monkeypatch.setattr(FQ, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(FQ, "on_gpu", lambda: True)
    fp8 = Q.quantize_fp8(torch.randn(E, 2 * I, D))
    assert FQ.tuned_config(fp8, E, I, D, K, 20) == cfg16 and FQ.tuned_config(fp8, E, I, D, K, 100) == cfg64
    assert FQ.tuned_config(fp8, E, I, D, K, 7) is None and FQ.tuned_config(fp8, E, I, D, K, 129) is None
    assert FQ.tuned_config(Q.quantize_fp8(torch.randn(E, 2 * I, D), 32), E, I, D, K, 20) is None   # block scales
    assert FQ.tuned_config(Q.quantize_int8(torch.randn(E, 2 * I, D)), E, I, D, K, 20) is None      # no int8 table
    int4 = moe_configs.config_file_name(E, I, D, K, FQ.TUNED_DTYPE["int4"])
    (tmp_path / int4).write_text(json.dumps({"configs": {"16": dict(cfg16, BLOCK_K=128)}}))
    assert FQ.tuned_config(Q.quantize_int4(torch.randn(E, 2 * I, D), 128), E, I, D, K, 20)["BLOCK_K"] == 128
    assert FQ.tuned_config(Q.quantize_int4(torch.randn(E, 2 * I, D), 32), E, I, D, K, 20) is None  # another group
    monkeypatch.setattr(FQ, "USE_TUNED", False)
    assert FQ.tuned_config(fp8, E, I, D, K, 20) is None


def test_tuner_script_smoke(tmp_path):
    """scripts/tune_fused_moe_quant.py end to end on tiny shapes under the interpreter (fp8 and grouped int4)."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "tune_fused_moe_quant.py"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--formats", "fp8", "int4", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ))   # the interpreter on a CPU (conftest)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "# best olmoe fp8 T=4" in run.stdout and "# best olmoe int4 T=16" in run.stdout
    assert len(list(tmp_path.glob("*dtype=int4_w4a16.json"))) == 1


@pytest.mark.parametrize("fmt", ["int8", "int4", "int4-zero", "int4-g128"])
@pytest.mark.parametrize("T", [3, 40])
def test_byte_tiles_read_the_same_codes(fmt, T, monkeypatch):
    """INT8_BYTE_TILES / INT4_BYTE_TILES (integer tensor-core tiles loaded as the bytes of the code words, no unpacking
    reshape; int4 split into even- and odd-input tiles against A's even and odd columns) read the same code values:
    the aligned MoE and the skinny dense GEMM give the word path's bits for int8 and its results to fp32 rounding for
    int4 (two dots of BK/2 sum in another order), on rows of 24 and 18 words and 3 or 40 tokens."""
    from minimoe.kernels import fused_moe_quant as FQ
    from minimoe.kernels.skinny_gemm import skinny_gemm_quant
    gen = torch.Generator().manual_seed(T)
    q13, q2 = make(fmt, 6, gen, d=96, i=72)                      # K = 96 and 72: not multiples of 64 or 128
    x = torch.randn(T, 96, generator=gen).to(DEVICE)
    ids, w = routing(T, 2, 6, gen)
    dense = FORMATS[fmt](torch.randn(40, 72, generator=gen).to(DEVICE))
    dense.__class__ = Q.QuantWeight
    h = torch.randn(min(T, 64), 72, generator=gen).to(DEVICE)
    bk = q13.group or 32                                         # a K step is one scale group
    cfg = {"variant": "aligned", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": bk, "GROUP_M": 1, "num_warps": 4,
           "num_stages": 1}
    flag = "INT8_BYTE_TILES" if fmt == "int8" else "INT4_BYTE_TILES"
    monkeypatch.setattr(FQ, "BIASED_TILES", "off")               # the biased operands: the next test
    out = {}
    for mode in ("words", "strided", "registers"):
        monkeypatch.setattr(FQ, flag, mode != "words")
        monkeypatch.setattr(FQ, "INT4_A_SPLIT", mode)
        want_bytes = {"words": 0, "strided": 1, "registers": 1 if fmt == "int8" else 2}[mode]
        assert FQ.byte_tiles(q13, bk) == want_bytes and FQ.byte_tiles(dense, bk) == want_bytes
        out[mode] = (fused_moe_quant(x, q13, q2, ids, w, config=cfg),
                     skinny_gemm_quant(h, dense, config={"SPLIT": 2, "BLOCK_K": bk}))
    for mode in ("strided", "registers"):
        if fmt == "int8":
            assert torch.equal(out[mode][0], out["words"][0]) and torch.equal(out[mode][1], out["words"][1])
        for got, want in zip(out[mode], out["words"]):
            assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-5
        check(out[mode][0], reference(x, q13, q2, ids, w), 2e-5)
        check(out[mode][1], h.double().cpu() @ dense.dequantize().double().cpu().T, 2e-5)
    monkeypatch.setattr(FQ, "INT4_BYTE_TILES", True)
    assert FQ.byte_tiles(q13, 16) == (fmt == "int8")                 # int4 halves need dots of 16 inputs or more


@pytest.mark.parametrize("fmt", ["int4", "int4-zero", "int4-g128"])
@pytest.mark.parametrize("T", [3, 40])
def test_biased_tiles_equal_the_plain_byte_tiles(fmt, T, monkeypatch):
    """BIASED_TILES (int4 nibbles OR'd into the mantissa of a magic 16-bit float, the magic and the zero point taken
    off the fp32 product as (MAGIC + z) x A's row sums, themselves a dot with a flat tile): with fp16 activations the
    aligned MoE and the skinny dense GEMM agree with the plain byte tiles to fp16 rounding and with the float64 oracle
    as closely; with fp32 activations the kernels keep the exact 2^23 path (same bits). int8 codes ignore the setting.
    On a GPU the PTX ("asm") is checked as well."""
    from minimoe.kernels import fused_moe_quant as FQ
    from minimoe.kernels.skinny_gemm import skinny_gemm_quant
    gen = torch.Generator().manual_seed(100 + T)
    q13, q2 = make(fmt, 6, gen, d=96, i=72)
    ids, w = routing(T, 2, 6, gen)
    dense = FORMATS[fmt](torch.randn(40, 72, generator=gen).to(DEVICE))
    dense.__class__ = Q.QuantWeight
    x32 = torch.randn(T, 96, generator=gen).to(DEVICE)
    h32 = torch.randn(min(T, 64), 72, generator=gen).to(DEVICE)
    bk = q13.group
    cfg = {"variant": "aligned", "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": bk, "GROUP_M": 1, "num_warps": 4,
           "num_stages": 1}
    modes = ("off", "ops") + (("asm",) if DEVICE == "cuda" else ())
    int8 = FORMATS["int8"](torch.zeros(2, 8, 64).to(DEVICE))
    for dtype in (torch.float16, torch.float32):
        x, h = x32.to(dtype), h32.to(dtype)
        out = {}
        for mode in modes:
            monkeypatch.setattr(FQ, "BIASED_TILES", mode)
            assert FQ.byte_tiles(q13, bk) == {"off": 2, "ops": 3, "asm": 4}[mode] and FQ.byte_tiles(int8, 64) == 1
            # the rows a tile may have: the MoE's measured 16-32, the skinny GEMM's 16-64 (prefill tiles stay plain)
            assert FQ.byte_tiles(q13, bk, 64) == 2
            assert FQ.byte_tiles(q13, bk, 64, FQ.SKINNY_BIASED_MAX_M) == FQ.byte_tiles(q13, bk, 32)
            out[mode] = (fused_moe_quant(x, q13, q2, ids, w, config=cfg),
                         skinny_gemm_quant(h, dense, config={"SPLIT": 2, "BLOCK_K": bk}))
        ref = (reference(x, q13, q2, ids, w), h.double().cpu() @ dense.dequantize().double().cpu().T)
        for mode in modes[1:]:
            for got, want, oracle in zip(out[mode], out["off"], ref):
                if dtype == torch.float32:
                    assert torch.equal(got, want), mode
                else:
                    assert ((got - want).abs().max() / want.abs().max()).item() <= 2e-3, mode
                    check(got, oracle, 2e-3)


def test_biased_magic_floats_and_their_ptx_model():
    """The magic floats of quant_tiles.nibble_tiles hold every nibble exactly (bf16 128 + u, fp16 1024 + u), and a
    bit-level model of its PTX (prmt.b32 byte selectors, lop3 0xEA = (a & b) | c, shr.u32, mov) gives those bits for
    every byte in every lane, in the order the tiles' elements come (byte i of the register = element i; element i
    in 16-bit half i of the outputs), and flat_tile's PTX gives the magic whatever the bytes."""
    from minimoe.kernels import quant_tiles as QT
    u = torch.arange(256, dtype=torch.int32)
    as_float = lambda bits, dt: bits.to(torch.int16).view(dt).double()                      # noqa: E731
    for magic, dt, base in ((0x4300, torch.bfloat16, 128.0), (0x6400, torch.float16, 1024.0)):
        assert torch.equal(as_float((u & 15) | magic, dt), base + (u & 15))
        assert torch.equal(as_float((u >> 4) | magic, dt), base + (u >> 4))

    def run(asm: str, reg: int) -> list[int]:                      # outputs $0.. of one asm instance, as 32-bit ints
        n_out = asm.count("$0") and max(int(t[1:]) for t in asm.replace(",", " ").replace(";", " ").split()
                                        if t.startswith("$") and t[1:].isdigit())
        regs, outs = {f"${n_out}": reg}, {}
        for line in asm.replace("{", "").replace("}", "").split(";"):
            parts = line.replace(",", " ").split()
            if not parts or parts[0] == ".reg":
                continue
            op, dst, *src = parts
            val = [regs[a] if a in regs else int(a, 0) for a in src]
            if op == "prmt.b32":
                pool = val[0].to_bytes(4, "little") + val[1].to_bytes(4, "little")
                out = int.from_bytes(bytes(pool[(val[2] >> (4 * i)) & 7] for i in range(4)), "little")
            elif op == "lop3.b32":
                assert val[3] == 0xEA
                out = (val[0] & val[1]) | val[2]
            elif op == "shr.u32":
                out = val[0] >> val[1]
            elif op == "mov.b32":
                out = val[0]
            else:
                raise AssertionError(op)
            regs[dst] = out
            if dst.startswith("$"):
                outs[dst] = out
        return [outs[k] for k in sorted(outs)]

    halves = lambda regs: [(r >> (16 * j)) & 0xFFFF for r in regs for j in (0, 1)]         # noqa: E731
    gen = torch.Generator().manual_seed(0)
    for word in torch.randint(0, 2 ** 32, (64,), generator=gen, dtype=torch.int64).tolist() + [0, 2 ** 32 - 1]:
        b = list(word.to_bytes(4, "little"))
        for asm, flat, magic in ((QT._NIBBLES_BF16.value, QT._FLAT_BF16.value, 0x4300),
                                 (QT._NIBBLES_FP16.value, QT._FLAT_FP16.value, 0x6400)):
            out = run(asm, word)
            assert halves(out[:2]) == [magic | (v & 15) for v in b]
            assert halves(out[2:]) == [magic | (v >> 4) for v in b]
            assert halves(run(flat, word)) == [magic] * 4


def test_zero_points_need_scale_groups():
    """A stack with zero points but row scales is no layout the kernels read: one clear error, not a silent misread."""
    from minimoe.kernels.moe_dequant import dequantize_stack
    from minimoe.kernels.quant_tiles import pointer_args
    m = Q.quantize_int4(torch.randn(2, 8, 64).to(DEVICE), 32, zero_point=True)
    m.group = 0
    with pytest.raises(ValueError, match="scale group"):
        pointer_args(m)
    with pytest.raises(ValueError, match="scale group"):
        dequantize_stack(m, slice(None), torch.float16)
