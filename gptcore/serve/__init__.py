"""The HTTP server: OpenAI-compatible completions over the inference engine, batched per step, and a chat page."""
