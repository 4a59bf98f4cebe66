"""LAMBADA, OpenAI's version (GPT-2's test file), zero-shot: predict each passage's last word.

As lm-evaluation-harness's lambada_openai: the text is split on single spaces; the target is the last piece with
its leading space (" " + text.split(" ")[-1]), the context is the rest joined back with spaces. The target's
tokens are scored given the context (left-truncated to the model's context if it is longer).
    acc  greedy decoding gets every target token right (argmax at each target position, given the true prefix)
    ppl  exp(-mean over passages of the target's summed log-likelihood): per passage, not per token
References (GPT-2 paper, 124M): acc 45.99%, ppl 35.13.
"""

import math

import torch

from .common import TaskResult, encode_pair, mean_stderr, require_gpt2
from .files import read_jsonl
from .scoring import score_requests


def problem(record: dict) -> str | None:
    text = record.get("text")
    if not isinstance(text, str) or " " not in text.strip():
        return "needs 'text': a passage of at least two words"
    return None


def load(path: str, limit: int | None = None) -> list[dict]:
    return read_jsonl(path, problem, limit)


def split(text: str) -> tuple[str, str]:
    """(context, target): everything before the last space, and the last word with its leading space."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def requests(items: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    return [encode_pair(tokenizer, *split(item["text"])) for item in items]


def evaluate(model, tokenizer, path: str, limit: int | None = None, batch_size: int = 16,
             dtype=torch.float32, progress: bool = True, dist=None) -> TaskResult:
    require_gpt2(tokenizer, "lambada")
    items = load(path, limit)
    scores = score_requests(model, requests(items, tokenizer), batch_size, dtype, progress, desc="lambada",
                            dist=dist)
    samples = [{"index": n, "target": split(item["text"])[1], "logprob": s.logprob, "n_tokens": s.n_tokens,
                "greedy": s.greedy} for n, (item, s) in enumerate(zip(items, scores))]
    hits = [float(s.greedy) for s in scores]
    nll = [-s.logprob for s in scores]
    mean_nll = sum(nll) / max(len(nll), 1)
    nll_stderr = mean_stderr(nll)
    ppl = math.exp(mean_nll)
    metrics = {"acc": sum(hits) / max(len(hits), 1), "ppl": ppl}
    # ppl's standard error by the delta method: d exp(m) = exp(m) dm
    stderr = {"acc": mean_stderr(hits), "ppl": None if nll_stderr is None else ppl * nll_stderr}
    return TaskResult("lambada", metrics, stderr, len(items), samples=samples)
