"""bench.py: MoE-Inference-Bench's measurements inside one engine, one switch per optimization.

A thin entry point: the benchmark is `minimoe.bench.cli` (also `python -m minimoe bench ...`).
    python bench.py --model olmoe --fused --bs 64
    python bench.py --model olmoe-tiny
"""
import sys

from minimoe.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
