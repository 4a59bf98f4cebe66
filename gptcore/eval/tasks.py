"""The task registry and the one entry point the script and the trainer call: run_tasks(model, tokenizer, ...)."""

import time

import torch

from ..errors import GPTCoreError
from . import hellaswag, lambada, perplexity
from .common import TaskResult
from .files import FILES, task_file

TASKS = {"hellaswag": hellaswag.evaluate, "lambada": lambada.evaluate, "wikitext2": perplexity.evaluate}
assert TASKS.keys() == FILES.keys()


def parse_tasks(spec: str) -> list[str]:
    """'hellaswag,lambada' -> ['hellaswag', 'lambada'], each known, in the order given."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown or not names:
        raise GPTCoreError(f"unknown task '{','.join(unknown) or spec}'; known: {', '.join(TASKS)}")
    return names


def run_task(name: str, model, tokenizer, data_dir: str | None = None, limit: int | None = None,
             batch_size: int = 16, dtype=torch.float32, progress: bool = True, verify: bool = True,
             dist=None) -> TaskResult:
    """One task's result; with dist (a gptcore.train.distributed.Distributed), every rank must call it."""
    path = task_file(name, data_dir, verify)
    start = time.perf_counter()
    result = TASKS[name](model, tokenizer, path, limit=limit, batch_size=batch_size, dtype=dtype, progress=progress,
                         dist=dist)
    result.seconds = time.perf_counter() - start
    return result


def results_json(results: list[TaskResult], config: dict, log_samples: bool = False) -> dict:
    """lm-evaluation-harness's shape: {"results": {task: {metric: value, metric_stderr: value}}, ...}."""
    out = {"results": {}, "n-samples": {}, "seconds": {}, "config": config}
    for r in results:
        out["results"][r.task] = {**r.metrics, **{f"{k}_stderr": v for k, v in r.stderr.items()}}
        out["n-samples"][r.task] = r.examples
        out["seconds"][r.task] = round(r.seconds, 2)
    if log_samples:
        out["samples"] = {r.task: r.samples for r in results}
    return out


def format_table(results: list[TaskResult]) -> str:
    """A Markdown table: task, metric, value, stderr, examples, seconds."""
    lines = ["| task | metric | value | stderr | examples | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        for n, (metric, value) in enumerate(r.metrics.items()):
            err = r.stderr.get(metric)
            lines.append(f"| {r.task if n == 0 else ''} | {metric} | {value:.4f} | "
                         f"{'' if err is None else f'{err:.4f}'} | {r.examples if n == 0 else ''} | "
                         f"{f'{r.seconds:.1f}' if n == 0 else ''} |")
    return "\n".join(lines)
