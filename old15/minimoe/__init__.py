"""minimoe: a small, readable inference engine for Mixture-of-Experts language models."""
