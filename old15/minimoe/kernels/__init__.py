"""Triton kernels. Each module is one kernel family and its launcher; the plain PyTorch paths
elsewhere in minimoe are their oracles."""
