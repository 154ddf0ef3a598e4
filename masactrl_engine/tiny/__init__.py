"""Test fixtures, not product: a tiny random diffusers checkpoint written offline.

Tests, the demo and the benchmarks load it through the same ``load_pipeline`` path as a real
checkpoint. Its images are noise by design: it has random weights.
"""

from .checkpoint import FORMAT_VERSION, SD15_SCHEDULER, make_tiny_checkpoint

__all__ = ["FORMAT_VERSION", "SD15_SCHEDULER", "make_tiny_checkpoint"]
