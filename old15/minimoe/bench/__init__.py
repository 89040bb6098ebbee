"""The measuring tools, apart from the engine: timing a run with CUDA events, rooflines and measured
ceilings, memory planning, the transformers peer, the single-layer benchmark, and the `bench` CLI
(bench.py at the top of the repository and `python -m minimoe bench` are both `bench.cli.main`).
Nothing in the engine imports from here."""
