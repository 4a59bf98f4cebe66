"""What the tasks share: their result record, lm-evaluation-harness's way to split a text pair into tokens,
the GPT-2 tokenizer check, and standard errors."""

import math
from dataclasses import dataclass, field

from ..errors import GPTCoreError


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]  # e.g. {"acc": 0.28, "acc_norm": 0.29}
    stderr: dict[str, float | None]  # the standard error of each metric, None where it has none
    examples: int  # examples scored (HellaSwag items, LAMBADA texts, WikiText-2 windows)
    seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)  # per-example scores, for --log-samples


def require_gpt2(tokenizer, task: str):
    """HellaSwag and LAMBADA are defined on text split by GPT-2's BPE; their scores mean nothing with another."""
    kind = tokenizer.describe().get("type")
    if kind != "gpt2":
        raise GPTCoreError(f"{task} needs a model with the GPT-2 BPE tokenizer, but this one uses a '{kind}' "
                           "tokenizer; evaluate it on wikitext2 (bits per byte compares across tokenizers)")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness makes them: trailing whitespace of the context
    moves to the continuation, the whole text is encoded once, and the continuation is what follows the
    context's own encoding. With GPT-2's BPE and a continuation that starts with one space, that equals encoding
    the two separately (build-nanogpt's way)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def mean_stderr(values: list[float]) -> float | None:
    """Standard error of a mean, sample standard deviation (n - 1) over sqrt(n), as lm-evaluation-harness."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
