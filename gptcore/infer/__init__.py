"""Inference: the generation engine (engine.py: Generator, and Batch for continuous batching), its KV cache
(cache.py), sampling maths (sampling.py), streamed text (text.py), int8 weights (quantize.py) and the fenced
private CPU kernels (cpu_kernels.py)."""

from .engine import Batch, Event, Generator, Request

__all__ = ["Batch", "Event", "Generator", "Request"]
