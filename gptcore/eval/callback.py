"""HellaSwag during training, as build-nanogpt does it: every `interval` steps, acc and acc_norm on the first
`limit` validation items, as hellaswag_acc and hellaswag_acc_norm in that step's metrics record.

The items are read and tokenized once, when the callback is made. Under DDP each rank scores its share of the
requests and all ranks get the same numbers (see scoring.py), so every rank must call it.
"""

import torch

from ..errors import GPTCoreError
from . import hellaswag
from .files import task_file


class HellaSwagCallback:
    def __init__(self, tokenizer, interval: int, limit: int | None = None, data_dir: str | None = None,
                 batch_size: int = 16):
        if interval < 1:
            raise GPTCoreError(f"--hellaswag-interval must be >= 1 (or 0 for off), got {interval}")
        if limit is not None and limit < 1:
            raise GPTCoreError(f"--hellaswag-limit must be >= 1 (or left out for all 10,042 items), got {limit}")
        kind = tokenizer.describe().get("type")
        if kind != "gpt2":
            raise GPTCoreError(f"HellaSwag during training needs the GPT-2 tokenizer, but this data was prepared with "
                               f"the '{kind}' tokenizer; pass --hellaswag-interval 0")
        self.interval, self.batch_size = interval, batch_size
        self.items = hellaswag.load(task_file("hellaswag", data_dir), limit)
        self.requests = hellaswag.requests(self.items, tokenizer)

    def due(self, step: int, max_steps: int) -> bool:
        return step % self.interval == 0 or step == max_steps

    def __call__(self, model, dtype=torch.float32, dist=None) -> dict:
        """{"hellaswag_acc": .., "hellaswag_acc_norm": ..} of the model (not DDP-wrapped) as it is now; with dist
        (a Distributed), each rank scores its share."""
        result = hellaswag.score(model, self.items, self.requests, self.batch_size, dtype, progress=False, dist=dist)
        return {f"hellaswag_{k}": v for k, v in result.metrics.items()}

    def on_batch_end(self, trainer):
        """The training recipe's hook (gptcore/train): when due, adds the scores to trainer.record, the step's
        metrics, scoring trainer.raw_model under the run's own autocast."""
        if self.due(trainer.iter_num, trainer.config.max_iters):
            with trainer.autocast():
                trainer.record.update(self(trainer.raw_model, dist=trainer.dist))
