"""Inference: the generation engine (engine.py), its KV cache (cache.py), sampling maths (sampling.py), streamed
text (text.py), int8 weights (quantize.py) and the fenced private CPU kernels (cpu_kernels.py)."""

from .engine import Event, Generator, Request

__all__ = ["Event", "Generator", "Request"]
