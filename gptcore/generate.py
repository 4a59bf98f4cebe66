"""Text generation: next-token sampling (temperature, top-k, top-p) and a decode loop over the KV cache.

The loop follows gpt-fast: the prompt goes through the model once (prefill), which fills every layer's preallocated
KV cache; after that each step feeds only the newest token, so no token recomputes the context before it.

Context window. GPT-2's positions are learned and absolute, so cached keys cannot be shifted left once the sequence
outgrows block_size. The policy, the same with and without the cache:
  - a prompt longer than block_size keeps only its last block_size tokens as context;
  - when the next token no longer fits, the context restarts from the last max(1, block_size // 2) tokens,
    which are prefilled again. That is one prefill every block_size // 2 tokens, cheap amortized.
use_cache=False recomputes that same window from scratch at every step (the slow reference), so greedy decoding
gives exactly the same tokens either way.

Batches: idx is (B, T), B prompts of the same length T (pad or group prompts of unequal length yourself).

Speed: prepare_for_generation() puts a model in the dtype that decodes fastest on the device; on CPUs with native
bf16 that includes packing every weight matrix once for oneDNN (PackedLinear). bench/bench_generate.py measures it.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from .device import generation_dtype, mkldnn_bf16
from .errors import GPTCoreError


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Raises GPTCoreError unless temperature >= 0 (0 means greedy), top_k >= 1 and 0 < top_p <= 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise GPTCoreError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise GPTCoreError(f"top_k must be an integer >= 1 (leave it unset for no top-k filtering), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise GPTCoreError(f"top_p must be in (0, 1] (leave it unset for no nucleus filtering), got {top_p!r}")


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


def sample_next_token(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                      generator: torch.Generator | None = None):
    """Logits (B, V) -> next token ids (B,): the argmax when temperature == 0, else a draw from next_token_probs."""
    if temperature == 0:
        return logits.float().argmax(dim=-1)  # the first of tied maxima, as in Hugging Face; fp32 argmax is faster
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _window_start(start: int, length: int, block_size: int) -> int:
    """Where the context of a `length`-token sequence begins, if it began at `start` one token earlier."""
    if length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


def generate_tokens(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, stop_token: int | None = None, use_cache: bool = True,
                    generator: torch.Generator | None = None):
    """An iterator over the new tokens, one (B,) tensor of ids per step; see generate() for the arguments.

    Bad arguments raise here, not at the first step. Once a row has produced stop_token it keeps yielding
    stop_token; the iteration ends when every row has.
    """
    vocab_size = model.config.vocab_size
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        raise GPTCoreError("idx must be a (B, T) tensor of token ids (torch.long); for one prompt use ids[None]")
    B, T = idx.shape
    if B == 0 or T == 0:
        raise GPTCoreError(f"the prompt batch has shape {tuple(idx.shape)}; give at least one token per row "
                           "(start from the tokenizer's eot_token for an empty prompt)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise GPTCoreError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    check_sampling(temperature, top_k, top_p)
    if stop_token is not None and not 0 <= stop_token < vocab_size:
        raise GPTCoreError(f"stop_token must be a token id in [0, {vocab_size}), got {stop_token!r}")
    return _decode(model, idx, max_new_tokens, temperature, top_k, top_p, stop_token, use_cache, generator)


@torch.no_grad()
def _decode(model, idx, max_new_tokens, temperature, top_k, top_p, stop_token, use_cache, generator):
    if max_new_tokens == 0:
        return
    block_size = model.config.block_size
    B, T = idx.shape
    seq = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    seq[:, :T] = idx
    start = max(0, T - block_size)
    was_training = model.training
    model.eval()
    if use_cache:
        model.setup_kv_cache(B)
    try:
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        for length in range(T, T + max_new_tokens):
            # the context is seq[:, start:length]; only its last position's logits are needed
            new_start = _window_start(start, length, block_size)
            if not use_cache:
                logits, _ = model(seq[:, new_start:length])
            elif length == T or new_start != start:
                logits, _ = model(seq[:, new_start:length], start_pos=0)  # prefill: the prompt, or a restarted window
            else:
                logits, _ = model(seq[:, length - 1:length], start_pos=length - 1 - start)
            start = new_start
            token = sample_next_token(logits[:, -1], temperature, top_k, top_p, generator)
            if stop_token is not None:
                token = token.masked_fill(done, stop_token)
                done |= token == stop_token
            seq[:, length] = token
            yield token
            if stop_token is not None and bool(done.all()):
                return
    finally:
        if use_cache:
            model.clear_kv_cache()
        model.train(was_training)


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_token: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None):
    """Continues B prompts of equal length: idx (B, T) -> (B, T + n), with n = max_new_tokens unless stopped early.

    temperature: 0 is greedy (argmax; top_k and top_p then change nothing); > 0 samples from
        softmax(logits / temperature).
    top_k: sample only among the k most likely tokens. top_p: only among the nucleus of probability >= top_p.
    stop_token: stop once every row has produced this id (e.g. tokenizer.eot_token); rows that stopped earlier are
        padded with it. None (the default) always generates max_new_tokens.
    use_cache: False recomputes the whole context window at every step: slow, for tests and benchmarks.
    generator: a seeded torch.Generator on idx's device makes sampling reproducible.
    The model is put in eval mode while it generates, and back in its previous mode afterwards.
    """
    new = list(generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, stop_token, use_cache,
                               generator))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()


def decode_stream(tokenizer, ids):
    """Token ids (any iterable of ints) -> pieces of text as soon as they are whole.

    A byte-level BPE token can end in the middle of a UTF-8 character; such tokens are held back until the
    character is complete, so the pieces joined are exactly tokenizer.decode(all ids).
    """
    pending = []
    for i in ids:
        pending.append(i)
        text = tokenizer.decode(pending)
        if not text.endswith("\ufffd"):
            yield text
            pending = []
    if pending:
        yield tokenizer.decode(pending)


# ---- the fastest way to run a model for generation ----

class PackedLinear(nn.Module):
    """An nn.Linear frozen for CPU inference in bf16: its weight is reordered once into oneDNN's blocked layout.

    Given a plain row-major bf16 weight, oneDNN's matmul repacks it into that layout inside every call, which
    costs as much as the product itself when a decode step multiplies it by a single vector. Packed once, the
    step only streams the weight.
    Outputs are bit-identical to nn.Linear's in bf16. The packed weight is a plain attribute: it does not move
    with .to() and is not in the state dict, so a model with PackedLinears is for generation only.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x):
        """(..., in_features) bf16 -> (..., out_features) bf16."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def prepare_for_generation(model, device, dtype: torch.dtype | None = None):
    """Moves the model to device and dtype (default: generation_dtype(device)) in eval mode, and returns it.

    On a CPU in bf16 every nn.Linear, the tied output head included, is replaced by a PackedLinear: about
    1.5x the fp32 decode speed on an AVX512-BF16 CPU, where plain bf16 is barely faster than fp32. That
    model is then for generation only (see PackedLinear).
    """
    dtype = dtype or generation_dtype(device)
    model = model.to(device=device, dtype=dtype).eval()
    if torch.device(device).type == "cpu" and dtype == torch.bfloat16 and mkldnn_bf16():
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child))
    return model
