"""HellaSwag, completion style (build-nanogpt's protocol), zero-shot, on the validation set.

Each item is a context and 4 endings, one right (`label`). The model reads the context, then an ending with a
leading space (" " + ending); the ending is scored by the log-likelihood of its own tokens only.
    acc       the ending with the highest sum of log-probabilities (lowest total cross-entropy) is the label
    acc_norm  the ending with the highest mean log-probability per token (lowest mean cross-entropy) is the label
acc_norm here is per token, as build-nanogpt computes it; lm-evaluation-harness's hellaswag normalizes by the
ending's length in bytes instead, and scores a differently cleaned text, so its numbers are close, not equal.
Ties go to the first ending. The context is left-truncated to fit the model's context (see scoring.py).
References (build-nanogpt, raw jsonl): GPT-2 124M acc 0.2859 / acc_norm 0.2955; GPT-2 XL 0.3842 / 0.4893.
"""

import torch

from .common import TaskResult, encode_pair, mean_stderr, require_gpt2
from .files import read_jsonl
from .scoring import score_requests


def problem(record: dict) -> str | None:
    """What is wrong with one line of the file, or None."""
    endings = record.get("endings")
    if not isinstance(record.get("ctx"), str):
        return "has no text 'ctx'"
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) and e for e in endings):
        return "needs 'endings': a list of 4 non-empty texts"
    if record.get("label") not in (0, 1, 2, 3) or isinstance(record.get("label"), bool):
        return "needs 'label': 0, 1, 2 or 3"
    return None


def load(path: str, limit: int | None = None) -> list[dict]:
    return read_jsonl(path, problem, limit)


def requests(items: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    """4 (context ids, ending ids) requests per item, in order."""
    return [encode_pair(tokenizer, item["ctx"], " " + ending) for item in items for ending in item["endings"]]


def evaluate(model, tokenizer, path: str, limit: int | None = None, batch_size: int = 16,
             dtype=torch.float32, progress: bool = True, dist=None) -> TaskResult:
    require_gpt2(tokenizer, "hellaswag")
    items = load(path, limit)
    return score(model, items, requests(items, tokenizer), batch_size, dtype, progress, dist)


def score(model, items: list[dict], reqs: list, batch_size: int = 16, dtype=torch.float32,
          progress: bool = True, dist=None) -> TaskResult:
    """acc and acc_norm of items whose requests(items, tokenizer) are given (the trainer tokenizes them once)."""
    scores = score_requests(model, reqs, batch_size, dtype, progress, desc="hellaswag", dist=dist)
    samples = []
    for n, item in enumerate(items):
        mine = scores[4 * n: 4 * n + 4]
        sums = [s.logprob for s in mine]
        means = [s.logprob / s.n_tokens for s in mine]
        pred, pred_norm = sums.index(max(sums)), means.index(max(means))
        samples.append({"index": n, "label": item["label"], "sum_logprob": sums, "n_tokens": [s.n_tokens for s in mine],
                        "pred": pred, "pred_norm": pred_norm,
                        "acc": float(pred == item["label"]), "acc_norm": float(pred_norm == item["label"])})
    metrics, stderr = {}, {}
    for key in ("acc", "acc_norm"):
        values = [s[key] for s in samples]
        metrics[key] = sum(values) / max(len(values), 1)
        stderr[key] = mean_stderr(values)
    return TaskResult("hellaswag", metrics, stderr, len(items), samples=samples)
