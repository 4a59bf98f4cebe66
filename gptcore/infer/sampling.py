"""Next-token sampling: temperature, top-k and top-p (nucleus) over logits, and the one check of those settings
that the library, sample.py and the server all use."""

import math

import torch
from torch.nn import functional as F

from ..errors import GPTCoreError


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   max_new_tokens: int | None = None, seed: int | None = None):
    """Raises GPTCoreError, one line naming the setting, unless temperature >= 0 (0 means greedy), top_k >= 1,
    0 < top_p <= 1, max_new_tokens >= 1 (when given) and seed is an integer in [0, 2**63) (when given)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise GPTCoreError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise GPTCoreError(f"top_k must be an integer >= 1 (leave it unset for no top-k filtering), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise GPTCoreError(f"top_p must be in (0, 1] (leave it unset for no nucleus filtering), got {top_p!r}")
    if max_new_tokens is not None and (not _is_int(max_new_tokens) or max_new_tokens < 1):
        raise GPTCoreError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise GPTCoreError(f"seed must be an integer in [0, 2**63), got {seed!r}")  # what torch's generators take


def next_token_probs(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Logits (B, V) -> the float32 distribution (B, V) that sampling draws from; temperature must be > 0.

    In this order: divide by temperature; keep the top_k largest logits (and any tied with the k-th);
    then keep the nucleus, the smallest set of most likely tokens whose probability sums to >= top_p;
    renormalize over what is kept.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        probs, order = torch.sort(F.softmax(logits, dim=-1), dim=-1, descending=True)
        # a token is dropped when the more likely tokens before it already reach top_p; the first one never is
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return F.softmax(logits, dim=-1)


def greedy_tokens(logits):
    """Logits (B, V) -> each row's argmax (B,), int64: the first of tied maxima, as in Hugging Face."""
    logits = logits.float()  # bf16 argmax is slower
    if logits.device.type == "cpu":
        # numpy's argmax is vectorized: over GPT-2's 50257 logits it took 8 us a row against torch's 100 us (measured
        # on the project's Xeon, one thread), a tenth of a small model's decode step
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


def sample_next_token(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                      generator: torch.Generator | None = None):
    """Logits (B, V) -> next token ids (B,): the argmax when temperature == 0, else a draw from next_token_probs."""
    if temperature == 0:
        return greedy_tokens(logits)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    # inverse CDF: one uniform per row, found in the running sum of probs. torch.multinomial draws one random
    # number per vocabulary entry (50257 for GPT-2), about 2 ms per row on a CPU: more than a small model's whole
    # decode step, and paid once per row, so it was what kept a batch of samplers from beating one.
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(len(cdf), 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    # the first token whose cdf passes u: a token of probability 0 adds nothing to the sum, so it is never drawn
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.size(-1) - 1).squeeze(1)
