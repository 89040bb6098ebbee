"""Decode MoE on int4 / int8 / fp8 weights, third design (after fused_moe_quant_small's 3-D tiles and
fused_moe_quant_gemv's fp32 2-D tiles): two fp16 weights a register (Marlin's trick).

Shape legend: T tokens, D hidden, E local experts, K experts per token, I expert FFN width,
PW codes an int32 word (8 for int4, 4 for int8: vLLM's and AWQ's pack factor), V words a tile row per step.
Inputs: x bf16 / fp16 (fp32 works, in fp16 precision), ids int32/int64 [T, K], routing weights [T, K];
outputs in x's dtype. Raises ValueError for a stack that is not minimoe's int4 / int8 codes or fp8 in whole
4-byte words, a BLOCK_K that is not a power of two holding whole quads of four words (32 int4 inputs, 16 int8 /
fp8) and whole scale groups, or a chain other than 1 or 4 (4 where BLOCK_K and the group hold whole chains).

The arithmetic (the PTX, the paired order, the precision bounds) is in pair_codes.py and pair_quads.py,
the two GEMV kernels in pair_kernels.py; this file holds their measured tiles and the launchers.

Config: the "pair" key of a fused_moe config, GEMM1's tiles with GEMM2's in "down" (as "gemv").
"""

import torch
import triton

from .moe_configs import on_gpu
from .pair_codes import H_SCALE, X_SCALE, pack_pairs, pair_bits, pair_supported, pair_words
from .pair_kernels import _down_pair_kernel, _gate_up_pair_kernel
from .pdl import launch_args
from .quant_tiles import layout_args


# Tiles per (format bits, tokens 1 or 2+): (GEMM1 (BLOCK_N, BLOCK_K, warps, stages, x_packed, wide), GEMM2 (...,
# split)), each GEMM's best in scripts/pair_tiles.py on the H200 (docs/results/2026-11-30-s6, calls 3 and 5), µs
# against the 2-D GEMVs of fused_moe_quant_gemv (Nsight Compute, call 1), Mixtral-8x7B at T = 1: int4 GEMM1
# 81 -> 53, GEMM2 137 -> 30 (split-K over 8: 42 unsplit); int8 GEMM1 72 -> 58 (93% of its floor), GEMM2 60 -> 32
# (86%; splitting only adds). Dense D x D decode layers (quant_pair_2d, GEMM2's kernel, x packed first): int4
# 18.7 -> 9.0-10.2 µs, int8 12.2 -> 9.3-9.5 (neither gains from split-K).
# Narrow experts (I < 4096: OLMoE, Qwen, DeepSeek) take _NARROW_INT4_UP for int4's GEMM1 at T = 1
# (OLMoE 17.5 -> 13.0 µs, Qwen3-30B-A3B 16.8 -> 11.5; Mixtral's 52.8 would become 63.8), and with chains of four
# words (below) every width does. int4's GEMM2 at T = 1 (chained): 16 x 512, one warp, 2 stages, split over 8
# (docs/results/2026-12-01-s16 call 6: Mixtral 28.3 µs alone vs 28.8-29.0 for 16 x 256; the step -0.58%).
_TILES = {
    (4, 1): ((32, 256, 4, 1, True, False), (16, 512, 1, 2, False, False, 8)),   # GEMM2: session 16 call 6
    (4, 2): ((16, 256, 2, 2, True, False), (16, 256, 1, 3, False, False, 8)),
    (8, 1): ((16, 512, 4, 1, False, False), (4, 1024, 2, 3, False, False, 1)),
    (8, 2): ((16, 512, 4, 1, True, False), (4, 1024, 2, 3, False, False, 2)),
}
_NARROW_INT4_UP = (4, 1024, 2, 1, True, True)
# fp8 takes int8's tiles (the same bytes a weight), but GEMM1 at T = 1 is its own: the e4m3 conversion is cheaper
# than int8's, and the fp8 sweep (scripts/pair_tiles.py --bits 0, docs/results/2026-12-01-s12 call 6) put int8's
# 16 x 512 / 4 warps behind: Mixtral 65.0 µs (16 x 256 / 2 warps: 58.8, 8 x 512 / 2 warps: 60.5), Qwen3-30B-A3B 11.3
# (10.7, 13.3), OLMoE 12.4 (12.4, 14.0). In the graphed bs-1 step (call 7) 16 x 256 won for Mixtral's wide experts
# (-0.74%; 8 x 512 +0.92%) and 8 x 512 for the narrow ones (Qwen3 -0.42%, OLMoE -0.55%; 16 x 256 +4.6 / +2.3%).
FP8_UP_T1 = (8, 512, 2, 1, False, False)             # experts narrower than 4096
FP8_UP_T1_WIDE = (16, 256, 2, 1, False, False)       # I >= 4096
_DENSE = {4: (32, 512, 4, 3, True, False, 1), 8: (4, 1024, 2, 3, True, False, 1)}
_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "x_packed", "wide", "split")
# Words an fp16 chain per format bits (pair_quads.py: 4 = a quad's pair sum converted to fp32 once; 1 = every word's),
# where the scale groups allow it (a quad inside one group); the tiles' "chain" key overrides. Measured on the H200
# (docs/results/2026-12-01-s16, call 2; graphed bs-1 step, same machine): int4 4 (Mixtral -0.6% with the old tiles,
# and its GEMM1 then takes the wide tile: 59.2 -> 42.7 µs; OLMoE -1.2%, Qwen3-30B-A3B -3.3%), int8 4 on the experts
# (-1.6% with the dense layers chained too), fp8 1 (+2.5%). Dense layers (quant_pair_2d) take DENSE_CHAIN: their input
# is any activation, scaled by X_SCALE only, and a quad of int8 / fp8 products overflows fp16 four times sooner
# (pair_quads.py); int4's quad bound (|x| ~1.3e5) holds for them.
CHAIN = {4: 4, 8: 4, 0: 1}
DENSE_CHAIN = {4: 4, 8: 1, 0: 1}
# Chained int4 tiles from the same session's sweep (call 4, scripts/pair_tiles.py --chains 4; µs a GEMM alone): the
# wide 4 x 1024 tile also for narrow experts' GEMM2 at T = 1 (OLMoE 9.5 -> 7.8, Qwen3-30B-A3B 8.4 -> 7.4; Mixtral's
# stays split over 8: 16 x 256 28.9, 16 x 512 / one warp 28.3 in call 6, _TILES), for GEMM1 at T = 2 (Mixtral 87.0 -> 75.4, Qwen3 16.1 -> 14.7) and for dense
# layers at T = 1 (D x D: Mixtral 11.0 -> 9.1 with x packed first, OLMoE / Qwen3 ~7.7 -> 5.2-5.4 without). Other token
# counts (the pair kernels serve up to T·K·4 <= E: Qwen3-30B-A3B to 4) keep the tables above. Off: the tables above.
CHAINED_TILES = True
# GEMM1 chained: x's pairs loaded as a [ROWS, V] tile laid out as the words are (pair_quads._quad_x) instead of split
# from a broadcast [V] load. The wide tile's loop then has no shared-memory conversion (10 -> 2 barriers a step in the
# sm90 compile, 357 -> 373 instructions), but the Mixtral int4 bs-1 step measured +11.5% (3,299 -> 3,678 µs, session
# 16 call 7): every row's lanes load the pairs again. Kept off, as a measured option.
X_TILE = False


def pair_config(m, K_in: int, down: bool = False, T: int = 1, width: int = 0, dense: bool = False) -> dict:
    """Tiles for a weight stack `m` reduced over K_in at T tokens (the measured table above); width: the
    experts' I (GEMM1), dense: a plain linear (quant_pair_2d)."""
    if not on_gpu():          # the interpreter pays per program and per op: few, mid-sized tiles
        bk = max(64, m.group)
        chain = _chain_of(m, dense)
        return {"BLOCK_N": 16, "BLOCK_K": bk, "num_warps": 4, "num_stages": 1, "x_packed": False,
                "wide": False, "split": 1, "chain": chain if _chain_fits(chain, bk, m) else 1}
    bits = pair_bits(m)                    # fp8 takes int8's tiles: the same bytes a weight
    chained4 = CHAINED_TILES and m.bits == 4 and _chain_of(m, dense) == 4     # where measured: T 1 (dense), 1-2
    if chained4 and dense and T == 1:
        tiles = (4, 1024, 2, 3, K_in >= 4096, True, 1)
    elif chained4 and down and T == 1 and K_in < 4096:
        tiles = (4, 1024, 2, 3, False, True, 1)
    elif chained4 and not down and not dense and T == 2:
        tiles = _NARROW_INT4_UP
    elif dense:
        tiles = _DENSE[bits]
    elif m.bits == 0 and T == 1 and not down:
        tiles = FP8_UP_T1_WIDE if width >= 4096 else FP8_UP_T1
    elif bits == 4 and T == 1 and not down and (width < 4096 or _chain_of(m, dense) == 4):
        tiles = _NARROW_INT4_UP      # chained, the wide tile reads a scale a quad, not a word: Mixtral 42.7 µs
    else:
        tiles = _TILES[(bits, min(T, 2))][1 if down else 0]
    cfg = dict(zip(_KEYS, tiles + (1,) * (len(_KEYS) - len(tiles))))
    cfg["BLOCK_K"] = max(m.group, min(cfg["BLOCK_K"], triton.next_power_of_2(K_in)))
    chain = _chain_of(m, dense)
    cfg["chain"] = chain if _chain_fits(chain, cfg["BLOCK_K"], m) else 1
    return cfg


def _chain_of(m, dense: bool) -> int:
    return (DENSE_CHAIN if dense else CHAIN).get(m.bits, 1)


def _chain_fits(chain: int, block_k: int, m) -> bool:
    """Whether quads of `chain` words fit a step of block_k inputs and never straddle a scale group."""
    span = chain * 32 // pair_bits(m)                    # inputs a chain covers
    return chain == 1 or (chain == 4 and block_k % span == 0 and (m.group == 0 or m.group % span == 0))


def _tiles(config, key, base, m):
    """`base` (pair_config's) with the config's "pair" keys (GEMM2's under "down") over it; a chain not given falls
    back to 1 where the given BLOCK_K cuts quads."""
    given = (config or {}).get("pair", {})
    given = given.get("down", {}) if key == "down" else given
    cfg = {k: given.get(k, base[k]) for k in base}
    if "chain" not in given and not _chain_fits(cfg["chain"], cfg["BLOCK_K"], m):
        cfg["chain"] = 1
    return cfg


def _check(cfg: dict, m) -> None:
    bk, pw = cfg["BLOCK_K"], 32 // pair_bits(m)
    if bk & (bk - 1) or bk % (4 * pw) or (m.group and bk % m.group):
        raise ValueError(f"pair kernels: BLOCK_K {bk} must be a power of two, a multiple of {4 * pw} "
                         f"and of the scale group {m.group}")
    if cfg["chain"] not in (1, 4) or not _chain_fits(cfg["chain"], bk, m):
        raise ValueError(f"pair kernels: chain {cfg['chain']} must be 1 or 4, and 4 needs BLOCK_K ({bk}) and the "
                         f"scale group ({m.group}) to hold whole quads of {4 * pw} inputs")


def fused_moe_quant_pair(x, w13, w2, ids, topk_weights, expert_offset: int, config: dict | None = None,
                         pdl: bool = False) -> torch.Tensor:
    """The decode path of fused_moe_quant with these kernels (inputs checked there): x [T, D], w13 / w2
    int4, int8 or fp8 stacks [E, 2I, D] / [E, D, I], ids/topk_weights [T, K] -> [T, D] in x.dtype."""
    for w in (w13, w2):
        if not pair_supported(w):
            raise ValueError(f"the pair decode kernels read int4 and int8 codes and fp8 in whole words, not "
                             f"{getattr(w, 'describe', lambda: type(w).__name__)()}")
    h = gate_up_pair(x, w13, w2, ids, expert_offset, config, pdl)
    return down_pair(h, w2, ids, topk_weights, expert_offset, x.new_empty(x.shape), config, False)  # pdl.py


def gate_up_pair(x, w13, w2, ids, expert_offset: int, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """GEMM1 alone: h [T·K, IP] fp16 in GEMM2's paired order (IP: w2's padded width), times H_SCALE."""
    T, D = x.shape
    E, two_i, _ = w13.stack_shape
    I, K = two_i // 2, ids.shape[1]
    cfg = _tiles(config, "gate_up", pair_config(w13, D, T=T, width=I), w13)
    _check(cfg, w13)
    x_packed = bool(cfg["x_packed"])
    xin = pack_pairs(x, w13, pdl) if x_packed else x
    data, scale, zero, kw = _pointers(w13)
    h_pw = 32 // pair_bits(w2)
    ip = pair_words(w2).shape[2] * h_pw                 # GEMM2's padded reduction: h's width
    h = torch.empty(T * K, ip, dtype=torch.float16, device=x.device)                  # [T·K, IP] paired order
    _gate_up_pair_kernel[(T * K * triton.cdiv(ip, cfg["BLOCK_N"]),)](
        xin, data, scale, zero, h, ids, K, expert_offset, E, I, ip, D, kw,
        xin.stride(0), *_strides(w13), h.stride(0), **_layout(w13),
        H_PW=h_pw, X_PACKED=x_packed, ASM=on_gpu(), WIDE=bool(cfg["wide"]), CHAIN=int(cfg["chain"]), X_TILE=X_TILE,
        EVEN=D % cfg["BLOCK_K"] == 0 and kw * (32 // pair_bits(w13)) == D,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))
    return h


def down_pair(h, w2, ids, topk_weights, expert_offset: int, out, config: dict | None = None,
              pdl: bool = False) -> torch.Tensor:
    """GEMM2 alone: h from gate_up_pair -> out [T, D] (written in place and returned)."""
    cfg = _tiles(config, "down", pair_config(w2, w2.K, down=True, T=out.shape[0]), w2)
    _check(cfg, w2)
    weights = topk_weights.float().contiguous().view(-1)                               # [T·K]
    _launch_down(h.view(torch.int32), True, w2, out, ids, weights, ids.shape[1], expert_offset, w2.stack_shape[0],
                 cfg, False, pdl, 1 / H_SCALE)
    return out


def _layout(m) -> dict:
    """The kernels' constexprs for a stack: fp8 is read as 8-bit fields of int32 words, FP8 marking them e4m3."""
    args = layout_args(m)
    del args["CODES"]
    if m.bits == 0:
        args.update(BITS=8, FP8=True)
    return args


def _pointers(m) -> tuple:
    """(int32 words [E, N, KW], scales, zero points (the scales when none: never read), KW)."""
    words = pair_words(m)
    scale = m.scale3
    return words, scale, m.zero3 if m.zero is not None else scale, words.shape[2]


def _strides(m) -> tuple:
    """(expert, row strides of the words; expert, row, group strides of the scales)."""
    words, scale = pair_words(m), m.scale3
    return words.stride(0), words.stride(1), scale.stride(0), scale.stride(1), scale.stride(2)


def _launch_down(h, packed, w, out, ids, weights, top_k, expert_offset, E, cfg, dense, pdl, in_unscale=1 / X_SCALE):
    T, D = out.shape
    data, scale, zero, kw = _pointers(w)
    I = w.K
    split = int(cfg["split"])
    blocks = T * triton.cdiv(D, cfg["BLOCK_N"])
    if split > 1:     # partials [SPLIT, T, D] fp32, then the counters [T·blocks] int32, zeroed: one memset
        ws = torch.zeros(split * T * D + blocks, dtype=torch.float32, device=out.device)
        ws, cnt = ws[:split * T * D], ws[split * T * D:].view(torch.int32)
    else:
        ws = cnt = out
    _down_pair_kernel[(blocks * split,)](
        h, data, scale, zero, out, ids, weights, ws, cnt, top_k, expert_offset, E, T, D, I, kw,
        h.stride(0), *_strides(w), out.stride(0), **_layout(w), X_PACKED=packed, DENSE=dense, ASM=on_gpu(),
        WIDE=bool(cfg["wide"]), CHAIN=int(cfg["chain"]), IN_UNSCALE=float(in_unscale), SPLIT=split,
        BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **launch_args(pdl))


def quant_pair_2d(x: torch.Tensor, w, config: dict | None = None, pdl: bool = False) -> torch.Tensor:
    """A dense int4 / int8 / fp8 layer at decode with these kernels: x [T, K] @ W[N, K]ᵀ -> [T, N] in x.dtype (x is
    read row-major: a strided x is made contiguous first). Raises ValueError for another format or a tile config that
    _check refuses (BLOCK_K, chain)."""
    if not pair_supported(w):
        raise ValueError(f"the pair decode kernels read int4 and int8 codes and fp8 in whole words, not "
                         f"{getattr(w, 'describe', lambda: type(w).__name__)()}")
    x = x.contiguous()
    T = x.shape[0]
    N = w.stack_shape[1]
    cfg = _tiles(config, "down", pair_config(w, w.K, down=True, T=T, dense=True), w)
    _check(cfg, w)
    out = x.new_empty(T, N)
    if T:
        packed = bool(cfg["x_packed"])
        xin = pack_pairs(x, w, pdl) if packed else x
        # DENSE: one "expert", one slot of weight 1; ids and routing weights are never read (x stands in)
        _launch_down(xin, packed, w, out, x, x, 1, 0, 1, cfg, True, pdl)
    return out
