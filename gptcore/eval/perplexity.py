"""WikiText-2 test perplexity with a sliding window, as the GPT-2 paper's table reports it (without its
detokenizers).

The whole file's text is tokenized once, with no <|endoftext|> added. Windows of the model's context
(block_size tokens of input) slide by `stride` tokens (default block_size // 2): the first window scores tokens
1..block_size, each next one the `stride` tokens after those already scored, reading up to block_size tokens
before each. Every token but the first is scored exactly once, with as much context as its window gives it.
    token_ppl  exp(total NLL / tokens scored)
    word_ppl   exp(total NLL / words), words = len(re.split(r"\\s+", text))
    bpb        total NLL / bytes / ln 2, bytes = len(text.encode("utf-8"))
Words and bytes are counted on the text scored, as lm-evaluation-harness counts them (on the document before
its detokenizer). lm-evaluation-harness's wikitext scores the raw variant document by document, detokenized and
with <|endoftext|> first; this scores the file as is, so the numbers are comparable in kind, not equal.
With a limit, only the first `limit` windows are scored, and words and bytes are those of the text they cover.
"""

import math
import re

import torch

from ..errors import GPTCoreError
from .common import TaskResult
from .scoring import score_requests


def windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first scored, end) per window: the model reads tokens[begin:end - 1] and scores tokens[first:end]."""
    if not 1 <= stride <= block_size:
        raise GPTCoreError(f"the stride must lie in [1, {block_size}] (the model's context), got {stride}")
    spans, first = [], 1
    while first < n_tokens:
        end = min(first + (block_size if first == 1 else stride), n_tokens)
        spans.append((max(0, end - 1 - block_size), first, end))
        first = end
    return spans


def evaluate_tokens(model, tokens: list[int], stride: int | None = None, limit: int | None = None,
                    batch_size: int = 16, dtype=torch.float32, progress: bool = True, dist=None):
    """(total NLL, tokens scored, windows, their Scores) of a token sequence, scoring its first `limit` windows."""
    block_size = model.config.block_size
    spans = windows(len(tokens), block_size, stride or max(block_size // 2, 1))[:limit]
    reqs = [(tokens[begin:first], tokens[first:end]) for begin, first, end in spans]
    scores = score_requests(model, reqs, batch_size, dtype, progress, desc="wikitext2", dist=dist)
    return -sum(s.logprob for s in scores), sum(s.n_tokens for s in scores), spans, scores


def evaluate(model, tokenizer, path: str, limit: int | None = None, batch_size: int = 16,
             dtype=torch.float32, progress: bool = True, dist=None, stride: int | None = None) -> TaskResult:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    tokens = tokenizer.encode(text)
    if len(tokens) < 2:
        raise GPTCoreError(f"{path} has fewer than 2 tokens; there is nothing to score")
    nll, n_scored, spans, scores = evaluate_tokens(model, tokens, stride, limit, batch_size, dtype, progress, dist)
    if spans[-1][2] < len(tokens):  # a limit stopped it early
        text = tokenizer.decode(tokens[:spans[-1][2]])  # the part of the text the windows cover
    words, n_bytes = len(re.split(r"\s+", text)), len(text.encode("utf-8"))
    metrics = {"token_ppl": math.exp(nll / n_scored), "word_ppl": math.exp(nll / words),
               "bpb": nll / n_bytes / math.log(2)}
    samples = [{"index": n, "begin": b, "first": f, "end": e, "logprob": s.logprob, "n_tokens": s.n_tokens}
               for n, ((b, f, e), s) in enumerate(zip(spans, scores))]
    return TaskResult("wikitext2", metrics, dict.fromkeys(metrics), len(spans), samples=samples)
