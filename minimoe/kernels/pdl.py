"""Programmatic Dependent Launch (Hopper and later): start the next kernel while this one drains.

Inside a CUDA graph a decode step is a chain of a few hundred kernels, each depending on the one
before. Normally kernel N+1 is launched only once kernel N has fully finished, so every boundary
costs a launch latency plus the tail of kernel N's last wave (measured on the H200 with
scripts/pdl_probe.py: 1.23 µs per boundary for a chain of tiny kernels, 0.86 µs with PDL). With
PDL, kernel N+1 is launched early and parks in `gdc_wait` (PTX griddepcontrol.wait) until kernel N
has completed and its writes are visible; kernel N lets it launch early with
`gdc_launch_dependents` (griddepcontrol.launch_dependents).

Our kernels call both as their first statements (`wait_then_release`): nothing is read or written
before the predecessor has finished, so results are meant to be exactly those without PDL; only the launch work
overlaps. scripts/pdl_order_check.py checks that in the machine code (no global access before SASS ACQBULK; 56 kernel
variants clean in the twenty-second session; that session's intermittent fast-path test failure, 3 of 75 eager draws
with PDL on and 0 of 75 off, looks like a bf16 routing near-tie as on the CPU, scripts/routing_ties.py, and
scripts/gpu/pdl_bisect.py with the two knobs below compares PDL on and off bit for bit to settle it). (Exceptions: the
dense GEMV's `PREFETCH_BYTES`, opt-in, and the router fold's `gate_splitk.PREFETCH_GATE`, on by default for 2-byte
gates since the twenty-first session's step probe, ask the L2 for their own weights, which no kernel writes, before
the wait.) Kernels we do not own (cuBLAS, PyTorch,
bitsandbytes) and the `--gemv triton` kernel (kernels/gemv.py) run in stream order.

Which launches may be early. An early-launched grid fills whatever SM slots free up first. After a one- or
few-program kernel (an RMSNorm, a router, the attention merge) that is every SM, evenly: a dense decode GEMV
launched so after its RMSNorm measured 1.1-1.5 µs less per pair (scripts/pdl_prefetch_probe.py, ninth
session, call 4). After a many-program kernel (the MoE's GEMM1) the next grid's programs pile onto the SMs
that finish first, and a bandwidth-bound GEMM2 with an uneven spread runs longer: PDL on every kernel made
Mixtral bs 1 6.92 -> 7.68 ms (third session). So the MoE's GEMM2 (and fp8's activation quantization of h
before it) is never launched early from GEMM1's start, in the bf16 and the quantized paths; everything else follows
`RunSettings.pdl`. GEMM2 of the bf16 decode MoE (`fused_moe_small`; one wave of programs at batch 1) releases its
successor early (`release_args`: the next layer's RMSNorm, or a shared expert's GEMV, parks in gdc_wait on the slots
GEMM2 leaves free; +0.2-0.8% out tok/s at bs 1, tenth session), and is itself launched with PDL after a GEMM1 whose
programs release it only after their last store (PDL 3, `release_at_end`: the launch overlaps GEMM1's end, nothing
parks beside its body; -0.13% to -0.40% a bs-1 step, thirty-fourth session, `fused_moe_small.GEMM2_AFTER_GEMM1_END`);
the aligned path's and the quantized GEMM2s (several waves) run in stream order and do not release, so their
successors start when their last program exits. One exception, the bf16 aligned GEMM2 under `fused_moe.OVERLAP_GEMMS`
(on by its "auto" rule at 16-64 tokens for OLMoE- and Qwen3-like shapes): launched with PDL but with no gdc_wait, each
program spinning on its own M-block's arrival counter, which GEMM1's programs release after their h stores
(fused_moe_gemms.py); it works beside GEMM1's last wave instead of parking there (forty-first session: -0.95% to
-1.25% a step; +1.72% on Mixtral's 8 blocks of 112 N tiles, which the rule leaves out). (The probe's L2 prefetch of a GEMV's first weight bytes before gdc_wait,
`prefetch_l2`, was slower than PDL alone at every size tried: kept as a kernel option, off.)

Every launcher takes `pdl: bool = False` and passes `launch_args(pdl)` to its kernels (GEMM2:
`launch_args(False)`; the bf16 decode GEMM1 / GEMM2 PDL 3 / `launch_args(pdl)`, or `launch_args` / `release_args(pdl)`
with GEMM2_AFTER_GEMM1_END off); the engine reads `RunSettings.pdl` where it
calls them (ops.py binds it into the ops table; attention.py, experts.py, linear.py pass it), and settings.py
resolves `auto` to on only for an sm90+ device without an EP / TP plan, while runtime.py refuses `on` elsewhere
(the interpreter has no griddepcontrol). No process-wide switch: two models in one process (a draft and its
target) can run with different settings.
"""
import sys

import triton
import triton.language as tl

# A bisection knob, empty by default: launches from these kernel modules ("minimoe.kernels.decode_attention", ...) run
# in stream order with no gdc_wait / gdc_launch_dependents, whatever the caller asked (scripts/gpu/pdl_bisect.py halves
# the set of modules it names).
OFF_IN: set[str] = set()
# The other bisection knob: False keeps every PDL launch and its gdc_wait but drops gdc_launch_dependents, so a successor
# launches only as the last program exits (the driver's implicit trigger). If an error then goes away, a successor
# read memory before the release's predecessor had finished: one whose access does not wait (not one of ours, if
# scripts/pdl_order_check.py passes), or a narrower timing window.
TRIGGER_EARLY = True
# The same per kernel module, for step probes: launches from these modules keep their PDL launch and gdc_wait but drop
# gdc_launch_dependents, so their successor's programs do not park beside theirs (the thirty-fourth session's call 1
# found a PDL-launched grid parked beside a running one costly: the MoE's GEMM2 beside a one-wave GEMM1, 7 to 14
# points of the step; its call 2 found every early release of the chain as built worth keeping).
LATE_TRIGGER_IN: set[str] = set()


def _caller() -> str | None:
    """The module name of the launcher calling launch_args / release_args (two frames up)."""
    return sys._getframe(2).f_globals.get("__name__")


def _pdl_value(caller: str | None):
    return True if TRIGGER_EARLY and caller not in LATE_TRIGGER_IN else 2


def launch_args(pdl: bool = False) -> dict:
    """Keyword arguments for a kernel launch: the kernel's PDL constexpr and Triton's launch flag (both False for a
    launcher in a module named in OFF_IN; PDL 2, wait only, with TRIGGER_EARLY off or the module in LATE_TRIGGER_IN)."""
    caller = _caller() if OFF_IN or LATE_TRIGGER_IN else None
    pdl = bool(pdl) and caller not in OFF_IN
    return {"PDL": _pdl_value(caller) if pdl else False, "launch_pdl": pdl}


def release_args(pdl: bool = False) -> dict:
    """A launch in stream order (never early) that, with pdl, still lets its successor launch early: the kernel's
    gdc_wait has no grid in flight to wait for, and its gdc_launch_dependents frees the next (PDL-launched) grid,
    which parks in its own gdc_wait until this one has finished. Dependents are launched only once every program
    of this grid has started and triggered, so a many-wave grid simply releases them later; for the decode MoE's
    GEMM2 at batch 1 (one wave) the successor's early programs take only slots that GEMM2 leaves free."""
    caller = _caller() if OFF_IN or LATE_TRIGGER_IN else None
    pdl = bool(pdl) and caller not in OFF_IN
    return {"PDL": _pdl_value(caller) if pdl else False, "launch_pdl": False}


@triton.jit
def wait_then_release(PDL: tl.constexpr):
    """PDL True: wait for the predecessor, then let the successor launch; 2 (TRIGGER_EARLY off) or 3 (a kernel that
    releases its successor at its end itself, `release_at_end`): wait only."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        if PDL != 2 and PDL != 3:
            tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def release_at_end(PDL: tl.constexpr):
    """PDL 3: let the successor launch now (called after a program's last store): its programs then park only while
    this grid's last programs finish, not beside its earlier waves."""
    if PDL == 3:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs, nbytes):
    """Ask the L2 for `nbytes` (an int32 tensor or scalar, a multiple of 16) from each 16-byte-aligned pointer
    of `ptrs` (PTX cp.async.bulk.prefetch.L2, sm90+): a hint, nothing is read into registers, so a
    PDL-launched kernel can issue it for weights that do not depend on its predecessor before gdc_wait."""
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n mov.u32 $0, 0;", "=r,l,r",
                              [ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_l2_lanes(ptrs, nbytes, lanes):
    """prefetch_l2 issued by threads 0 .. lanes - 1 only (lanes an int32 tensor shaped like ptrs, all equal): a
    small 1-D tensor of N elements sits in every thread, element i in threads i, i + N, ... (Triton's blocked
    layout), so the plain form issues each prefetch once a thread; with lanes = N each is issued once."""
    tl.inline_asm_elementwise(
        "{\n .reg .pred p;\n .reg .u32 t;\n mov.u32 t, %tid.x;\n setp.lt.u32 p, t, $3;\n"
        " @p cp.async.bulk.prefetch.L2.global [$1], $2;\n mov.u32 $0, 0;\n}",
        "=r,l,r,r", [ptrs, nbytes, lanes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _pdl_mark_kernel(PDL: tl.constexpr):
    wait_then_release(PDL)


def pdl_mark() -> None:
    """One empty program launched from the host with PDL on the current stream (sm90+ only; bench.py TTFT unchanged).

    Why: the thirty-seventh session found the graphed decode step 1.3-1.9% slower (Qwen3-30B-A3B bs 1 2,478.1 against
    2,444.4 µs, OLMoE 898.5 against 882.5 in one call; scripts/prefill_state_probe.py) whenever a graphed prefill had
    run since the last kernel the host launched with PDL. The caches the two prefills leave are bit-identical
    (scripts/prefill_cache_probe.py); a host-launched PDL kernel after the graphed prefill and its output's copy
    (this one, a Triton RMSNorm, an eager decode step) restores the fast step; a host launch without PDL (a torch
    add, the same RMSNorm), the decode graph's own replays, a rested GPU (100 ms of sleep) and this kernel launched
    between the replay and the output's copy do not. The state lives in the GPU or the driver, not in memory; the
    mechanism is not known. graphs.PrefillGraph.run calls this after its output's copy: bench.py bs 1 Qwen3-30B-A3B
    397.0 -> 402.7 out tok/s, OLMoE 1,088.0 -> 1,104.1, and +0.5-0.9% at bs 16 / 64 (H200, one run each)."""
    _pdl_mark_kernel[(1,)](num_warps=1, **launch_args(True))
