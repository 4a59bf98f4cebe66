"""Training: the GPT-2 recipe as a reusable Trainer with callbacks (minGPT's idea), single process or DDP.

Warmup then cosine decay, gradient accumulation, clipping, fused AdamW, bf16 autocast where it helps,
val loss and a sample at every eval, atomic checkpoints that resume to exactly the run it would have been.
"""

import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import (checkpoint_path, latest_checkpoint, load_checkpoint, model_checkpoint, prune_checkpoints,
                         save_checkpoint)
from .device import bf16_helps, default_device, measure_matmul_peak, peak_flops
from .errors import GPTCoreError
from .fileio import atomic_path
from .model import GPT, PRESETS, GPTConfig

# TrainConfig's model settings: every GPTConfig field but vocab_size, which comes from the data
MODEL_FIELDS = tuple(f.name for f in fields(GPTConfig) if f.name != "vocab_size")


@dataclass
class TrainConfig:
    """Every training setting, with its default. The defaults are build-nanogpt's GPT-2 (124M) recipe."""
    # data and output
    data: str = "data/pystdlib"  # a folder written by data/prepare.py
    out_dir: str = "out"
    init_from: str = "resume"  # resume (or scratch if out_dir has no checkpoint) | scratch | gpt2* | a HF folder
    # model (vocab_size comes from the data)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    dropout: float = 0.0
    bias: bool = True
    # batch: batch_size sequences per micro-step and process; accumulation makes up total_batch_tokens
    batch_size: int = 64
    total_batch_tokens: int | None = 524_288  # 2**19, ~0.5M tokens as GPT-3 Small
    grad_accum_steps: int | None = None  # derived from total_batch_tokens when that is set
    # optimization
    max_steps: int = 19_073  # 10B tokens at 0.5M per step
    learning_rate: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 715
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_steps: int = 20  # val batches per eval, shared among the processes
    sample_tokens: int = 48  # length of the sample printed at every eval; 0 turns it off
    save_interval: int = 1000
    keep_checkpoints: int = 3
    # system
    seed: int = 1337
    device: str | None = None  # cuda, cpu or mps; None picks the best available
    dtype: str | None = None  # float32 or bfloat16; None picks bfloat16 where it is faster
    compile: bool = False

    @classmethod
    def from_preset(cls, name: str | None, **overrides) -> "TrainConfig":
        """Defaults, then the preset's, then the overrides (flags)."""
        if name is not None and name not in TRAIN_PRESETS:
            raise GPTCoreError(f"unknown training preset '{name}'; known presets: {', '.join(TRAIN_PRESETS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise GPTCoreError(f"unknown training settings: {', '.join(sorted(unknown))}")
        settings = {**(TRAIN_PRESETS[name] if name else {}), **overrides}
        # of the two ways to size a step, the one given explicitly wins over what the preset says
        if "grad_accum_steps" in overrides and "total_batch_tokens" not in overrides:
            settings["total_batch_tokens"] = None
        if "total_batch_tokens" in overrides and "grad_accum_steps" not in overrides:
            settings["grad_accum_steps"] = None
        return cls(**settings)

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_FIELDS})


def _gpt2_size(preset: str, lr, total_batch_tokens=524_288):
    # GPT-3 paper, table 2.1: same data and schedule, learning rate shrinking with size; min lr is 10% of max
    n_layer, n_head, n_embd = PRESETS[preset]
    return dict(data="data/fineweb-edu", n_layer=n_layer, n_head=n_head, n_embd=n_embd, learning_rate=lr,
                min_lr=lr / 10, total_batch_tokens=total_batch_tokens, batch_size=16, compile=True)


TRAIN_PRESETS = {
    # the default dataset on a CPU in under 10 minutes: a small model that learns to write Python-looking code
    "quickstart": dict(data="data/pystdlib", out_dir="out/quickstart", n_layer=4, n_head=4, n_embd=128, block_size=128,
                       batch_size=16, total_batch_tokens=None, max_steps=450, learning_rate=2e-3, min_lr=2e-4,
                       warmup_steps=30, eval_interval=50, eval_steps=10, save_interval=100),
    # nanoGPT's baby GPT on characters of Shakespeare
    "shakespeare-char": dict(data="data/shakespeare-char", out_dir="out/shakespeare-char", n_layer=6, n_head=6,
                             n_embd=384, block_size=256, dropout=0.2, batch_size=64, total_batch_tokens=None,
                             max_steps=5000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100,
                             beta2=0.99, eval_interval=250, eval_steps=50, save_interval=1000),
    # build-nanogpt: GPT-2 (124M) on 10B tokens of FineWeb-Edu
    "gpt2-124m": dict(data="data/fineweb-edu", out_dir="out/gpt2-124m", compile=True),
    "gpt2-medium": _gpt2_size("gpt2-medium", 3e-4),
    "gpt2-large": _gpt2_size("gpt2-large", 2.5e-4),
    "gpt2-xl": _gpt2_size("gpt2-xl", 2e-4, total_batch_tokens=1_048_576),
}


def learning_rate(step: int, c: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine decay to min_lr at max_steps. step counts from 0."""
    if step < c.warmup_steps:
        return c.learning_rate * (step + 1) / c.warmup_steps
    if step >= c.max_steps:
        return c.min_lr
    progress = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (c.learning_rate - c.min_lr)


@dataclass
class Distributed:
    """Where this process sits: rank 0 of 1 without torchrun."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """Joins the process group when started by torchrun (NCCL on GPU, gloo on CPU); a no-op otherwise."""
    if "RANK" not in os.environ:
        return Distributed()
    d = Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
    return d


def capture_rng() -> dict:
    """Every RNG a run touches, in types that torch.load(weights_only=True) accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(py_state), py_gauss]}


def restore_rng(state: dict):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


class MetricsLog:
    """metrics.jsonl: one JSON object per step. On resume, lines past the checkpoint's step are dropped,
    so the file reads as if the run had never stopped."""

    def __init__(self, path: str, resume_step: int):
        self.path = path
        kept = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill
                        continue
                    if record["step"] <= resume_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.writelines(kept)
        self.file = open(path, "a")

    def write(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


class Trainer:
    """Trains `model` on batches from `train_loader`.

    Callbacks get the trainer: add_callback("on_step_end" | "on_eval" | "on_checkpoint", fn). After a step,
    trainer.step, trainer.last_record (the metrics.jsonl record) and trainer.raw_model are there to read.
    """

    EVENTS = ("on_step_end", "on_eval", "on_checkpoint")

    def __init__(self, config: TrainConfig, model: GPT, tokenizer, train_loader, val_loader=None,
                 dist_info: Distributed | None = None, device: str = "cpu"):
        self.config = c = config
        self.dist = dist_info or Distributed()
        self.device = device
        self.device_type = torch.device(device).type
        self.tokenizer = tokenizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.callbacks: dict[str, list[Callable]] = {e: [] for e in self.EVENTS}

        tokens_per_micro_step = c.batch_size * c.block_size * self.dist.world_size
        self.grad_accum_steps = c.grad_accum_steps or 1
        if c.total_batch_tokens is not None:
            if c.total_batch_tokens % tokens_per_micro_step:
                raise GPTCoreError(
                    f"total_batch_tokens={c.total_batch_tokens} is not a multiple of batch_size*block_size*processes="
                    f"{c.batch_size}*{c.block_size}*{self.dist.world_size}={tokens_per_micro_step}; change one of them")
            derived = c.total_batch_tokens // tokens_per_micro_step
            if c.grad_accum_steps is not None and c.grad_accum_steps != derived:
                raise GPTCoreError(f"grad_accum_steps={c.grad_accum_steps} contradicts total_batch_tokens="
                                   f"{c.total_batch_tokens} (which gives {derived}); set only one of them")
            self.grad_accum_steps = derived
        self.tokens_per_step = tokens_per_micro_step * self.grad_accum_steps

        self.dtype = c.dtype or ("bfloat16" if bf16_helps(device) else "float32")
        if self.dtype not in ("float32", "bfloat16"):
            raise GPTCoreError(f"dtype must be float32 or bfloat16, not '{self.dtype}'")
        if self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for the fp32 matmuls autocast leaves
            torch.backends.cudnn.allow_tf32 = True

        self.raw_model = model.to(device)
        self.optimizer = model.configure_optimizer(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), self.device_type)
        self.model = torch.compile(model) if c.compile else model
        if self.dist.enabled:
            self.model = DDP(self.model, device_ids=[self.dist.local_rank] if self.device_type == "cuda" else None)

        peak = peak_flops(device)
        # no spec sheet for CPUs: MFU against a measured matmul ceiling. Only the main process reports MFU, so only
        # it spends the measuring time; the others leave peak None and their records simply carry no "mfu".
        if peak is None and self.device_type == "cpu" and self.dist.is_main:
            peak = measure_matmul_peak(device, torch.bfloat16 if self.dtype == "bfloat16" else torch.float32)
        self.peak_flops = peak
        self.step = 0
        self.last_record: dict = {}
        self._stop_signal = None

    def add_callback(self, event: str, fn: Callable):
        if event not in self.EVENTS:
            raise GPTCoreError(f"unknown callback event '{event}'; events: {', '.join(self.EVENTS)}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str):
        for fn in self.callbacks[event]:
            fn(self)

    # ---- checkpoints ----

    def checkpoint(self) -> dict:
        ckpt = model_checkpoint(self.raw_model, self.tokenizer, self.step)
        ckpt.update(optimizer=self.optimizer.state_dict(), loader=self.train_loader.state_dict(), rng=capture_rng(),
                    train_config=asdict(self.config))
        return ckpt

    def save(self):
        if self.dist.is_main:
            path = checkpoint_path(self.config.out_dir, self.step)
            save_checkpoint(path, self.checkpoint())
            prune_checkpoints(self.config.out_dir, self.config.keep_checkpoints)
        self._fire("on_checkpoint")

    def resume(self, ckpt: dict):
        """Restores model, optimizer, step, data position and RNGs from a training checkpoint."""
        if "optimizer" not in ckpt:
            raise GPTCoreError("this checkpoint holds only model weights (no optimizer or data state): "
                               "sample from it, but resume only from a training checkpoint")
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.train_loader.load_state_dict(ckpt["loader"])
        restore_rng(ckpt["rng"])
        self.step = ckpt["step"]

    # ---- evaluation ----

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same first eval_steps val batches every time; with N processes each takes 1/N of them
        (rounded up), so the val set is the single-process one whenever N divides eval_steps."""
        self.model.eval()
        self.val_loader.reset()
        steps = -(-self.config.eval_steps // self.dist.world_size)
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            x, y = (t.to(self.device) for t in self.val_loader.next_batch())
            with self._autocast():
                _, loss = self.model(x, y)
            total += loss.float()
        mean = total / steps
        if self.dist.enabled:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        self.model.train()
        return mean.item()

    @torch.no_grad()
    def sample(self, max_new_tokens: int) -> str:
        """A short continuation of <|endoftext|>, from a private generator so training's RNG stream is untouched."""
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        start = torch.tensor([[self.tokenizer.eot_token]], device=self.device)
        with self._autocast():
            out = self.raw_model.generate(start, max_new_tokens, top_k=50, generator=gen)
        return self.tokenizer.decode(out[0, 1:].tolist())

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    # ---- the loop ----

    def forward_backward(self) -> torch.Tensor:
        """Accumulates into .grad the gradient of the mean loss over grad_accum_steps micro-batches; returns that mean."""
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum_steps):
            x, y = (t.to(self.device, non_blocking=True) for t in self.train_loader.next_batch())
            if self.dist.enabled:  # gradients are averaged across processes once, on the last micro-step
                self.model.require_backward_grad_sync = micro == self.grad_accum_steps - 1
            with self._autocast():
                _, loss = self.model(x, y)
            # each micro-batch adds 1/k of its gradient: the sum is the gradient of the mean, not of the sum
            (loss / self.grad_accum_steps).backward()
            loss_sum += loss.detach().float()
        mean_loss = loss_sum / self.grad_accum_steps
        if self.dist.enabled:
            dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
        return mean_loss

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step over grad_accum_steps micro-batches -> (mean loss, grad norm before clipping, lr)."""
        c = self.config
        mean_loss = self.forward_backward()
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), c.grad_clip if c.grad_clip > 0 else float("inf"))
        lr = learning_rate(self.step, c)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss.item(), norm.item(), lr

    def _handle_signal(self, signum, frame):
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        """True when any process got SIGINT/SIGTERM, so all of them stop after the same step."""
        if not self.dist.enabled:  # alone, no need for a device tensor and a sync every step
            return self._stop_signal is not None
        flag = torch.tensor(float(self._stop_signal is not None), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def run(self):
        from tqdm import tqdm

        from .plot import plot_losses
        c = self.config
        main = self.dist.is_main
        metrics = MetricsLog(os.path.join(c.out_dir, "metrics.jsonl"), self.step) if main else None
        handlers = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        flops_per_token = self.raw_model.flops_per_token(c.block_size)
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not main, unit="step", dynamic_ncols=True)
        self.model.train()
        try:
            while self.step < c.max_steps:
                t0 = time.perf_counter()
                loss, norm, lr = self.train_step()  # its .item() calls wait for the GPU, so dt is the step's real time
                dt = time.perf_counter() - t0
                self.step += 1
                if not math.isfinite(loss):
                    raise GPTCoreError(f"the loss became {loss} at step {self.step}; lower --learning-rate, or use "
                                       f"--dtype float32, and resume from the last checkpoint")
                tok_per_s = self.tokens_per_step / dt
                record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                          "tokens": self.step * self.tokens_per_step, "dt": dt, "tok_per_s": tok_per_s}
                if self.peak_flops:
                    record["mfu"] = flops_per_token * tok_per_s / (self.peak_flops * self.dist.world_size)
                evaluating = self.val_loader is not None and (self.step % c.eval_interval == 0 or self.step == c.max_steps)
                if evaluating:
                    record["val_loss"] = self.evaluate()
                self.last_record = record
                if main:
                    metrics.write(record)
                    bar.update(1)
                    bar.write(format_record(record))
                    if evaluating:
                        if c.sample_tokens:
                            bar.write(f"sample: {self.sample(c.sample_tokens)!r}")
                        plot_losses(metrics.path, os.path.join(c.out_dir, "loss.png"))
                if evaluating:
                    self._fire("on_eval")
                self._fire("on_step_end")
                stop = self._should_stop()
                if stop or self.step % c.save_interval == 0 or self.step == c.max_steps:
                    self.save()
                if stop:
                    if main:
                        bar.write(f"stopped by signal at step {self.step}; checkpoint saved, run again to resume")
                    break
        finally:
            bar.close()
            if metrics:
                metrics.close()
            for s, h in handlers.items():
                signal.signal(s, h)


def format_record(r: dict) -> str:
    """The one console line per step: step, loss, lr, grad norm, tok/s, MFU (and val loss at evals)."""
    line = f"step {r['step']:>6} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | norm {r['grad_norm']:.2f} | {r['tok_per_s']:,.0f} tok/s"
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    if "val_loss" in r:
        line += f" | val {r['val_loss']:.4f}"
    return line


def build_trainer(config: TrainConfig) -> Trainer:
    """Everything train.py does before the loop: processes, data, model (new, resumed or pretrained), Trainer.

    As the original README: the newest checkpoint in out_dir is resumed; without one, training starts from
    scratch (or from pretrained GPT-2 weights with init_from=gpt2*|DIR).
    """
    from .data import ShardLoader, read_meta
    from .tokenizer import tokenizer_from_description

    device = config.device or default_device()
    d = init_distributed(device)
    if device == "cuda" and d.enabled:  # one GPU per process
        device = f"cuda:{d.local_rank}"
    meta = read_meta(config.data)
    tokenizer = tokenizer_from_description(meta["tokenizer"])

    ckpt_file = latest_checkpoint(config.out_dir) if os.path.isdir(config.out_dir) else None
    if ckpt_file and config.init_from == "scratch":
        raise GPTCoreError(f"--init-from scratch, but {config.out_dir} already has checkpoints; "
                           "pick a new --out-dir or delete them")
    torch.manual_seed(config.seed)  # the same initial weights on every process
    if ckpt_file:
        ckpt = load_checkpoint(ckpt_file)
        _check_resumable(ckpt, ckpt_file, config, meta)
        model = GPT(GPTConfig(**{**ckpt["model_config"], "dropout": config.dropout}))
    elif config.init_from in ("resume", "scratch"):
        model = GPT(config.model_config(meta["vocab_size"]))
    else:
        model = GPT.from_pretrained(config.init_from, dropout=config.dropout)
        if meta["tokenizer"] != {"type": "gpt2"}:
            raise GPTCoreError(f"pretrained GPT-2 reads GPT-2 tokens, but {config.data} was prepared with the "
                               f"{meta['tokenizer']['type']} tokenizer; prepare it with --tokenizer gpt2")
        if config.block_size > model.config.block_size:
            raise GPTCoreError(f"block_size={config.block_size} is longer than the pretrained model's "
                               f"{model.config.block_size}")
    torch.manual_seed(config.seed + d.rank)  # but different dropout masks on each

    train = ShardLoader(config.data, "train", batch_size=config.batch_size, block_size=config.block_size,
                        rank=d.rank, world_size=d.world_size, seed=config.seed)
    val = ShardLoader(config.data, "val", batch_size=config.batch_size, block_size=config.block_size,
                      rank=d.rank, world_size=d.world_size, shuffle=False)
    trainer = Trainer(config, model, tokenizer, train, val, d, device)
    if ckpt_file:
        trainer.resume(ckpt)
        if d.is_main:
            print(f"resuming from {ckpt_file} at step {trainer.step}")
    return trainer


def _check_resumable(ckpt: dict, path: str, config: TrainConfig, meta: dict):
    """A checkpoint resumes only into the model shape and data it was trained with."""
    saved = ckpt["model_config"]
    # model flags describe the model; pretrained runs take the weights' shape. (scratch never gets here: build_trainer
    # refuses scratch into an out_dir with checkpoints.) Dropout may change on resume: it is no part of the weights.
    if config.init_from == "resume":
        wanted = asdict(config.model_config(meta["vocab_size"]))
        differ = [f"{k}={saved[k]} (this run: {wanted[k]})" for k in wanted if k != "dropout" and saved[k] != wanted[k]]
        if differ:
            raise GPTCoreError(f"checkpoint {path} is from a different model config: {', '.join(differ)}; "
                               "use matching flags or another --out-dir")
    if ckpt["tokenizer"] != meta["tokenizer"]:
        raise GPTCoreError(f"checkpoint {path} was trained with another tokenizer than {config.data}'s; "
                           "use the same --data or another --out-dir")


def destroy_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()
