"""The language-model recipe's callbacks: throughput and MFU, val loss, metrics.jsonl, the progress line, a sample,
loss.png and checkpoints. Each is an object whose methods are named after the Trainer's events
(trainer.add_callbacks(obj)); within on_batch_end they run in the order installed, each reading or adding to
trainer.record, the step's metrics.
"""

import json
import os

import torch
from tqdm import tqdm

from ..checkpoint import checkpoint_path, prune_checkpoints, save_checkpoint
from ..fileio import atomic_path
from ..plot import plot_losses


class Throughput:
    """Adds tokens, tok_per_s and (given the device's peak FLOP/s) mfu to the record."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None, world_size: int,
                 peak_source: str | None = None):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world_size = peak_flops, world_size
        self.peak_source = peak_source  # a line saying where peak_flops came from, printed once by the recipe

    def on_batch_end(self, trainer):
        r = trainer.record
        r["tokens"] = trainer.iter_num * self.tokens_per_step
        r["tok_per_s"] = self.tokens_per_step / trainer.iter_dt
        if self.peak_flops:
            r["mfu"] = self.flops_per_token * r["tok_per_s"] / (self.peak_flops * self.world_size)
            r["peak_flops"] = self.peak_flops  # the ceiling MFU is against: on a CPU measured once, then kept


class LongRunNotice:
    """Once the first steps give a speed (the median of steps 2 to 6: the first one warms up), says how long the rest
    of the run will take when that is over an hour, so a preset meant for a GPU doesn't silently run for days."""

    STEPS = 6
    HOUR = 3600.0

    def __init__(self, device: str):
        self.device, self.times, self.said = device, [], False

    def on_batch_end(self, trainer):
        if self.said or trainer.config.max_iters is None:
            return
        self.times.append(trainer.iter_dt)
        if len(self.times) < self.STEPS:
            return
        self.said = True
        per_step = sorted(self.times[1:])[len(self.times[1:]) // 2]
        left = per_step * (trainer.config.max_iters - trainer.iter_num)
        if left > self.HOUR:
            steps_left = trainer.config.max_iters - trainer.iter_num
            tqdm.write(f"note: at {per_step:.2f} s per step on {self.device}, the {steps_left:,} steps left take about "
                       f"{_duration(left)}; Ctrl-C saves a checkpoint, and a run with fewer --max-iters (or "
                       "--preset quickstart) finishes sooner")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} hours" if seconds < 3 * 86400 else f"{seconds / 86400:,.0f} days"


class Evaluate:
    """Every `interval` steps and at the last, the mean loss over the first `steps` batches of `val_loader` (a
    ShardLoader), as record["val_loss"]; then fires on_eval. With N processes each takes 1/N of the batches (rounded
    up), so the val set is the single-process one whenever N divides steps."""

    FIRES = ("on_eval",)

    def __init__(self, val_loader, interval: int, steps: int):
        self.val_loader, self.interval, self.steps = val_loader, interval, steps

    def on_batch_end(self, trainer):
        if trainer.iter_num % self.interval == 0 or trainer.iter_num == trainer.config.max_iters:
            trainer.record["val_loss"] = self.evaluate(trainer)
            trainer.trigger_callbacks("on_eval")

    @torch.no_grad()
    def evaluate(self, trainer) -> float:
        trainer.model.eval()
        self.val_loader.reset()
        steps = -(-self.steps // trainer.world_size)
        total = torch.zeros((), device=trainer.device)
        for _ in range(steps):
            x, y = (t.to(trainer.device) for t in self.val_loader.next_batch())
            with trainer.autocast():
                _, loss = trainer.model(x, y)
            total += loss.float()
        mean = total / steps
        if trainer.world_size > 1:
            trainer.dist.mean(mean)
        trainer.model.train()
        return mean.item()


class MetricsFile:
    """metrics.jsonl: one JSON record per step. On resume, lines past the resumed step are dropped, so the file reads
    as if the run had never stopped."""

    def __init__(self, path: str):
        self.path, self.file = path, None

    def on_train_start(self, trainer):
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill
                        continue
                    if record["step"] <= trainer.iter_num:
                        kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_path(self.path) as tmp, open(tmp, "w") as f:
            f.writelines(kept)
        self.file = open(self.path, "a")

    def on_batch_end(self, trainer):
        self.file.write(json.dumps(trainer.record) + "\n")
        self.file.flush()

    def on_train_end(self, trainer):
        if self.file:
            self.file.close()


def format_record(r: dict) -> str:
    """The one console line per step: step, loss, lr, grad norm, tok/s, MFU (and val loss at evals)."""
    line = f"step {r['step']:>6} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | norm {r['grad_norm']:.2f}"
    if "tok_per_s" in r:
        line += f" | {r['tok_per_s']:,.0f} tok/s"
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    if "val_loss" in r:
        line += f" | val {r['val_loss']:.4f}"
    return line


class ProgressLine:
    """A tqdm bar over the steps, and format_record's line for each."""

    def __init__(self):
        self.bar = None

    def on_train_start(self, trainer):
        self.bar = tqdm(total=trainer.config.max_iters, initial=trainer.iter_num, unit="step", dynamic_ncols=True)

    def on_batch_end(self, trainer):
        self.bar.update(1)
        self.bar.write(format_record(trainer.record))

    def on_train_end(self, trainer):
        if self.bar:
            self.bar.close()


class SampleText:
    """At each eval, a short continuation of <|endoftext|> from a private generator (training's RNG is untouched),
    printed and put in trainer.record["sample"] for the callbacks after it (the trackers)."""

    def __init__(self, tokenizer, max_new_tokens: int, seed: int):
        self.tokenizer, self.max_new_tokens, self.seed = tokenizer, max_new_tokens, seed

    def on_batch_end(self, trainer):
        if "val_loss" in trainer.record:
            trainer.record["sample"] = self.sample(trainer)
            tqdm.write(f"sample: {trainer.record['sample']!r}")

    @torch.no_grad()
    def sample(self, trainer) -> str:
        gen = torch.Generator(device=trainer.device).manual_seed(self.seed)
        start = torch.tensor([[self.tokenizer.eot_token]], device=trainer.device)
        with trainer.autocast():
            out = trainer.raw_model.generate(start, self.max_new_tokens, do_sample=True, top_k=50, generator=gen)
        return self.tokenizer.decode(out[0, 1:].tolist())


class LossPlot:
    """loss.png, redrawn from metrics.jsonl at each eval."""

    def __init__(self, metrics_path: str, png_path: str):
        self.metrics_path, self.png_path = metrics_path, png_path

    def on_batch_end(self, trainer):
        if "val_loss" in trainer.record:
            plot_losses(self.metrics_path, self.png_path)


class Checkpoints:
    """Every `interval` steps, at the last, and when stopped by a signal: the trainer's state_dict() plus `extra()`
    (what else sampling needs; the trainer's weights win) in ckpt_NNNNNNN.pt, written atomically by the main process;
    the newest `keep` stay. Then fires on_checkpoint."""

    FIRES = ("on_checkpoint",)

    def __init__(self, out_dir: str, interval: int, keep: int, extra):
        self.out_dir, self.interval, self.keep, self.extra = out_dir, interval, keep, extra

    def on_batch_end(self, trainer):
        step = trainer.iter_num
        if not (trainer.stop_requested or step % self.interval == 0 or step == trainer.config.max_iters):
            return
        state = trainer.state_dict()  # on every process: under FSDP it gathers the shards
        if trainer.is_main:
            save_checkpoint(checkpoint_path(self.out_dir, step), {**self.extra(trainer), **state})
            prune_checkpoints(self.out_dir, self.keep)
        trainer.trigger_callbacks("on_checkpoint")
        if trainer.stop_requested and trainer.is_main:
            tqdm.write(f"stopped at step {step}; checkpoint saved, run again to resume")
