"""Test fixtures, not product: tiny random diffusers checkpoints (one per model family) and a tiny
LoRA, written offline.

Tests, the demo and the benchmarks load them through the same ``load_pipeline`` path as a real
checkpoint. Their images are noise by design: they have random weights.
"""

from .checkpoint import FAMILIES, FORMAT_VERSION, SD15_SCHEDULER, make_tiny_checkpoint
from .lora import make_tiny_lora

__all__ = ["FAMILIES", "FORMAT_VERSION", "SD15_SCHEDULER", "make_tiny_checkpoint", "make_tiny_lora"]
