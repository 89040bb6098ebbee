"""Does Programmatic Dependent Launch shorten a chain of small kernels inside a CUDA graph?

    python scripts/pdl_probe.py

A decode step at batch 1 is hundreds of kernels of a few microseconds each; between two dependent
kernels the GPU drains the first and only then launches the second. With PDL (sm90+) the second
kernel is launched early and waits in `gdc_wait` for the first's results. We time a graph of N
dependent tiny kernels (each adds 1 to a vector) with and without it, and check the sum.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < n)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(x_ptr + offs, v + 1, mask=offs < n)


def chain(x, n_kernels, pdl, programs):
    block = triton.cdiv(x.numel(), programs)
    block = triton.next_power_of_2(block)
    for _ in range(n_kernels):
        _add_one[(triton.cdiv(x.numel(), block),)](x, x.numel(), BLOCK=block, PDL=pdl, launch_pdl=pdl)


def main():
    N = 200
    for programs in (1, 16, 132):
        for n_elem in (4096, 1 << 20):
            res = {}
            for pdl in (False, True):
                x = torch.zeros(n_elem, device="cuda")
                chain(x, 2, pdl, programs)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    chain(x, N, pdl, programs)
                x.zero_()
                g.replay()
                torch.cuda.synchronize()
                ok = bool((x == N).all())
                times = []
                for _ in range(20):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record(); g.replay(); b.record(); b.synchronize()
                    times.append(a.elapsed_time(b) * 1e3 / N)
                res[pdl] = (sorted(times)[10], ok)
            print(f"programs {programs:4d} elems {n_elem:8d}: plain {res[False][0]:.2f} us/kernel "
                  f"(ok={res[False][1]}), pdl {res[True][0]:.2f} us/kernel (ok={res[True][1]})")


if __name__ == "__main__":
    main()
