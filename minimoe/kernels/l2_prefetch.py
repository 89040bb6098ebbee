"""Stream the next layer's weights into L2 while a latency-bound kernel leaves HBM idle.

Shape legend: P programs of the issuing kernel, NT prefetches a program (one per thread), C bytes a prefetch.

At batch 1 a decode layer alternates kernels that stream weights from HBM (the q/k/v, o and expert GEMVs,
near bandwidth) with kernels that move a few hundred KB and are bound by latency: q/k-norm + rope + the
cache write, split attention, its merge, the router (profile_step.py: Mixtral ~8 µs a layer between the
q/k/v and o GEMVs, OLMoE ~9). During that window HBM is nearly idle, yet the weight the next GEMV will read
is known in advance: no kernel writes it. So the kernel before the window asks the L2 for it
(PTX `cp.async.bulk.prefetch.L2.global`, sm90+: fire and forget, nothing comes back to the SM, no
register or shared memory held, the program goes on at once) and the GEMV then reads from L2 (50 MB on
an H100 / H200: Mixtral's 33.5 MB o projection fits). It is a hint: the results are bit-identical with
or without it; only where the bytes come from changes. CUTLASS's and DeepGEMM's TMA-prefetch of the next
tiles and vLLM's / SGLang's "prefetch the next layer's weights" experiments (FlashInfer's
`prefetch` in its persistent kernels) are the same idea inside one kernel; here it crosses kernels.

The range is cut into P·NT chunks of C bytes (`plan`: C a multiple of 16, the instruction's unit), program
p owning chunks p·NT .. p·NT + NT - 1, thread i of it issuing one (none for a chunk past the end): the
whole range is asked for exactly once, however many programs the issuing grid has.

Who issues matters. An SM works through its bulk prefetches at a bounded rate and its program does not
finish before they are handed on: issued by the split attention (9-80 programs, ~0.1-0.9 MB each), the o
weight made the step 1.0-9.1% slower on four models (docs/results/2026-12-01-s12, call 1; the kernel
finished later by about the time its SMs needed to issue their share). So the issuer is the q/k/v GEMV
just before attention: hundreds of programs in one wave, each asking for ~20-50 KB as it stores its output
(kernels/dense_gemv.py `l2_prefetch`, fused_moe_small's DENSE epilogue), through `attention.py` / `mla.py`
under `--l2-prefetch` (settings.py).
"""
import torch
import triton
import triton.language as tl

ALIGN = 16                 # cp.async.bulk: 16-byte aligned address, size a multiple of 16

_PREFETCH_ASM = tl.constexpr("""{
.reg .pred p;
setp.ne.s32 p, $2, 0;
@p cp.async.bulk.prefetch.L2.global [$1], $2;
mov.u32 $0, 0;
}""")


@triton.jit
def prefetch_share(base_ptr, nbytes, chunk, pid, NT: tl.constexpr):
    """Program `pid`'s NT chunks of `chunk` bytes of the range [base_ptr, base_ptr + nbytes) (base_ptr a uint8
    pointer), clipped to its end, one L2 prefetch a thread (the PTX runs only on an sm90+ GPU)."""
    first = pid.to(tl.int64) * NT * chunk
    start = first + tl.arange(0, NT).to(tl.int64) * chunk                      # [NT] byte offsets
    size = tl.minimum(tl.maximum(nbytes - start, 0), chunk).to(tl.int32)        # 0 past the end: not issued
    tl.inline_asm_elementwise(_PREFETCH_ASM, "=r,l,r", [base_ptr + start, size], dtype=tl.int32, is_pure=False,
                              pack=1)


def plan(nbytes: int, programs: int, per_program: int) -> int:
    """C: the chunk size in bytes so that `programs` x `per_program` chunks cover nbytes (a multiple of 16)."""
    if nbytes <= 0 or programs <= 0 or per_program <= 0:
        raise ValueError(f"l2_prefetch.plan: nbytes {nbytes}, programs {programs} and per_program {per_program} "
                         "must be positive")
    return triton.cdiv(triton.cdiv(nbytes, programs * per_program), ALIGN) * ALIGN


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous CUDA tensor as uint8 [nbytes], checked for the instruction: 16-byte aligned
    start and length. Raises ValueError otherwise (one sentence)."""
    if t.device.type != "cuda" or not t.is_contiguous() or t.data_ptr() % ALIGN or t.nbytes % ALIGN or not t.nbytes:
        raise ValueError(f"an L2 prefetch needs a non-empty contiguous CUDA tensor with a 16-byte aligned start and "
                         f"length (got {tuple(t.shape)} {t.dtype} on {t.device}, {t.nbytes} bytes)")
    return t.view(-1).view(torch.uint8)
