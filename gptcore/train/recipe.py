"""The GPT-2 language-model run that train.py makes: processes, data, model (new, resumed or pretrained), and the
generic Trainer with the recipe's callbacks (see lm_callbacks, the list to extend).

As the original README: the newest checkpoint in out_dir is resumed; without one, training starts from scratch
(or from pretrained GPT-2 weights with init_from=gpt2*|DIR).
"""

import os
import time
from dataclasses import asdict, replace

import torch

from ..checkpoint import export_model, latest_checkpoint, load_checkpoint, model_checkpoint
from ..data import ShardLoader, read_meta, shard_token_count
from ..device import cpu_matmul_peak, default_device, peak_flops
from ..errors import GPTCoreError
from ..eval.callback import HellaSwagCallback
from ..model import GPT, GPTConfig
from ..tokenizer import tokenizer_from_description
from .callbacks import (Checkpoints, Evaluate, LongRunNotice, LossPlot, MetricsFile, ProgressLine, SampleText,
                        Throughput)
from .config import TrainConfig
from .distributed import destroy_distributed, init_distributed
from .loop import Trainer
from .trackers import TensorBoardCallback, WandbCallback, parse_trackers


def grad_accum_steps(config: TrainConfig, world_size: int) -> int:
    """Micro-batches per step: trainer.grad_accum_steps, or what makes up total_batch_tokens across the processes."""
    t = config.trainer
    tokens_per_micro_step = t.batch_size * config.model.block_size * world_size
    if config.total_batch_tokens is None:
        return t.grad_accum_steps or 1
    if config.total_batch_tokens % tokens_per_micro_step:
        raise GPTCoreError(
            f"total_batch_tokens={config.total_batch_tokens} is not a multiple of batch_size*block_size*processes="
            f"{t.batch_size}*{config.model.block_size}*{world_size}={tokens_per_micro_step}; change one of them")
    derived = config.total_batch_tokens // tokens_per_micro_step
    if t.grad_accum_steps is not None and t.grad_accum_steps != derived:
        raise GPTCoreError(f"grad_accum_steps={t.grad_accum_steps} contradicts total_batch_tokens="
                           f"{config.total_batch_tokens} (which gives {derived}); set only one of them")
    return derived


def trackers(config: TrainConfig) -> list:
    """The log_to trackers, logging into out_dir. Made first thing, on every process, so that a bad name or a missing
    package stops the run at once everywhere; only the main process installs them."""
    made = []
    for name in parse_trackers(config.log_to):
        if name == "tensorboard":
            made.append(TensorBoardCallback(os.path.join(config.out_dir, "tensorboard"), hparams=config))
        else:
            made.append(WandbCallback(project=config.wandb_project, dir=config.out_dir, config=config,
                                      name=os.path.basename(os.path.normpath(config.out_dir))))
    return made


def lm_callbacks(config: TrainConfig, trainer: Trainer, tokenizer, val_loader, tracker_callbacks=()) -> list:
    """The recipe's callbacks, in the order they run after each step. Add yours here (before MetricsFile, if it adds
    to trainer.record). The trackers come after the sample (they log it) and before the checkpoint (so a step is
    logged before the checkpoint that a resume starts after)."""
    c = config
    model = trainer.raw_model
    tokens_per_step = c.trainer.batch_size * model.config.block_size * trainer.grad_accum_steps * trainer.world_size
    peak = peak_flops(trainer.device)
    # no spec sheet for CPUs: MFU against the CPU's matmul ceiling, measured once per machine and dtype and then kept,
    # so runs compare (its measurement draws from a private generator: a resume's restored RNG stays untouched).
    # Only the main process reports MFU, so only it spends the time.
    if peak is None and trainer.device_type == "cpu" and trainer.is_main:
        dtype = torch.bfloat16 if trainer.dtype == "bfloat16" else torch.float32
        peak, source = cpu_matmul_peak(dtype)
        source = f"MFU is against this CPU's {trainer.dtype} matmul ceiling, {peak / 1e9:,.1f} GFLOP/s ({source})"
    else:
        source = None
    metrics = os.path.join(c.out_dir, "metrics.jsonl")
    # sampling (rank 0 alone) and HellaSwag (the model's parts called outside its forward) need whole weights, which
    # FSDP gathers only inside forward: under FSDP they are off (opening() says so), and sample.py and eval.py read the
    # checkpoints instead
    sample, hellaswag = (0, 0) if c.trainer.fsdp else (c.sample_tokens, c.hellaswag_interval)
    everyone = [Throughput(tokens_per_step, model.flops_per_token(model.config.block_size), peak, trainer.world_size,
                           source),
                Evaluate(val_loader, c.eval_interval, c.eval_steps),
                *([HellaSwagCallback(tokenizer, c.hellaswag_interval, c.hellaswag_limit)] if hellaswag else [])]
    main_only = [MetricsFile(metrics), ProgressLine(), LongRunNotice(trainer.device),
                 *([SampleText(tokenizer, c.sample_tokens, c.trainer.seed)] if sample else []),
                 LossPlot(metrics, os.path.join(c.out_dir, "loss.png")), *tracker_callbacks]
    checkpoints = Checkpoints(c.out_dir, c.save_interval, c.keep_checkpoints,
                              lambda t: {**model_checkpoint(t.raw_model, tokenizer, t.iter_num),
                                         "train_config": asdict(c)})
    return [*everyone, *(main_only if trainer.is_main else []), checkpoints]


def build_trainer(config: TrainConfig) -> tuple[Trainer, object]:
    """Everything train.py does before the loop -> (trainer with the recipe's callbacks, tokenizer)."""
    tracker_callbacks = trackers(config)
    device = default_device() if config.trainer.device == "auto" else config.trainer.device
    d = init_distributed(device)
    if device == "cuda" and d.enabled:  # one GPU per process
        device = f"cuda:{d.local_rank}"
    meta = read_meta(config.data)
    tokenizer = tokenizer_from_description(meta["tokenizer"])

    ckpt_file = latest_checkpoint(config.out_dir) if os.path.isdir(config.out_dir) else None
    if ckpt_file and config.init_from != "resume":
        raise GPTCoreError(f"--init-from {config.init_from}, but --out-dir {config.out_dir} already holds a run "
                           f"({os.path.basename(ckpt_file)}), which would be resumed instead: pick a new --out-dir "
                           "for this run, or leave --init-from out to continue that one")
    dropouts = {k: getattr(config.model, k) for k in ("dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop")}
    torch.manual_seed(config.trainer.seed)  # the same initial weights on every process
    if ckpt_file:
        ckpt = load_checkpoint(ckpt_file)
        _check_resumable(ckpt, ckpt_file, config, meta)
        model = GPT(GPTConfig(**{**ckpt["model_config"], **dropouts}))
    elif config.init_from in ("resume", "scratch"):
        model = GPT(config.model_config(meta["vocab_size"]))
    else:
        model = GPT.from_pretrained(config.init_from, **dropouts)
        if meta["tokenizer"] != {"type": "gpt2"}:
            raise GPTCoreError(f"pretrained GPT-2 reads GPT-2 tokens, but {config.data} was prepared with the "
                               f"{meta['tokenizer']['type']} tokenizer; prepare it with --tokenizer gpt2")
        if config.model.block_size > model.config.block_size:
            raise GPTCoreError(f"block_size={config.model.block_size} is longer than the pretrained model's "
                               f"{model.config.block_size}")
    torch.manual_seed(config.trainer.seed + d.rank)  # but different dropout masks on each

    block_size = config.model.block_size
    train = ShardLoader(config.data, "train", batch_size=config.trainer.batch_size, block_size=block_size,
                        rank=d.rank, world_size=d.world_size, seed=config.trainer.seed)
    val = ShardLoader(config.data, "val", batch_size=config.trainer.batch_size, block_size=block_size,
                      rank=d.rank, world_size=d.world_size, shuffle=False)
    trainer_config = replace(config.trainer, device=device, grad_accum_steps=grad_accum_steps(config, d.world_size))
    trainer = Trainer(trainer_config, model, train, dist=d if d.enabled else None)
    callbacks = lm_callbacks(config, trainer, tokenizer, val, tracker_callbacks)
    for callback in callbacks:
        trainer.add_callbacks(callback)
    if ckpt_file:
        trainer.load_state_dict({"iter_num": ckpt["step"], "data": ckpt.get("loader"), **ckpt})  # older files: loader
    if d.is_main:
        print(opening(config, trainer, meta, ckpt_file, tokens=[sum(map(shard_token_count, loader.files))
                                                                for loader in (train, val)]))
        if callbacks[0].peak_source:
            print(callbacks[0].peak_source)
    return trainer, tokenizer


def opening(config: TrainConfig, trainer: Trainer, meta: dict, ckpt_file: str | None, tokens: list[int]) -> str:
    """The run's first lines: device, dtype and why, the model's size, the data, the out dir, and new or resumed."""
    model = trainer.raw_model
    m = model.config
    if ckpt_file:
        start = f"resuming from {ckpt_file} at step {trainer.iter_num} of {trainer.config.max_iters}"
    elif config.init_from == "resume":
        start = "a new run (no checkpoint there yet)"
    else:
        start = f"a new run from {config.init_from}'s weights"
    return "\n".join([
        f"device {trainer.device}, {trainer.dtype} ({trainer.dtype_reason})",
        f"model {model.num_params():,} parameters: {m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, "
        f"context {m.block_size}",
        f"data {config.data}: {tokens[0]:,} train and {tokens[1]:,} val tokens "
        f"({meta['tokenizer']['type']} tokenizer, vocab {meta['vocab_size']:,})",
        f"out dir {config.out_dir}: {start}",
        *([f"FSDP over {trainer.world_size} processes: no sample or HellaSwag during training (sample.py and eval.py "
           "read the checkpoints)"]
          if trainer.config.fsdp else [])])


def closing(config: TrainConfig, trainer: Trainer, minutes: float) -> str:
    """The run's last line: where its outputs went, and the command that samples from them."""
    out = config.out_dir
    return (f"done: step {trainer.iter_num} of {trainer.config.max_iters} in {minutes:.1f} min; in {out}: the newest "
            f"ckpt_*.pt, metrics.jsonl, loss.png; sample it: python sample.py --checkpoint {out}")


def train(config: TrainConfig, export: str | None = None):
    """train.py: build, run, and when the run completes, optionally export a weights-only bf16 checkpoint."""
    start = time.perf_counter()
    try:
        trainer, tokenizer = build_trainer(config)
        max_iters = trainer.config.max_iters
        if max_iters is not None and trainer.iter_num >= max_iters:
            if trainer.is_main:
                print(f"nothing to do: the run in {config.out_dir} is already at step {trainer.iter_num}, and "
                      f"--max-iters is {max_iters}; raise --max-iters to train it further, or pick a new --out-dir")
            return
        trainer.run()
        if export and trainer.iter_num == max_iters:
            state = trainer.model_state_dict()  # on every process: under FSDP it gathers the shards
            if trainer.is_main:
                export_model(trainer.raw_model, tokenizer, trainer.iter_num, export, state=state)
                print(f"exported the model to {export}")
        if trainer.is_main:
            print(closing(config, trainer, (time.perf_counter() - start) / 60))
    finally:
        destroy_distributed()


def _check_resumable(ckpt: dict, path: str, config: TrainConfig, meta: dict):
    """A checkpoint resumes only into the model shape and data it was trained with, from a training checkpoint."""
    if "optimizer" not in ckpt:
        raise GPTCoreError("this checkpoint holds only model weights (no optimizer or data state): "
                           "sample from it, but resume only from a training checkpoint")
    saved = ckpt["model_config"]
    # model flags describe the model; pretrained runs take the weights' shape. (scratch never gets here: build_trainer
    # refuses scratch into an out_dir with checkpoints.) Dropout may change on resume: it is no part of the weights.
    if config.init_from == "resume":
        wanted = asdict(config.model_config(meta["vocab_size"]))
        shape = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size", "bias")
        differ = [f"{k}={saved[k]} (this run: {wanted[k]})" for k in shape if saved[k] != wanted[k]]
        if differ:
            raise GPTCoreError(f"--out-dir {config.out_dir} holds a run of another model ({', '.join(differ)}), "
                               f"which {path} would resume: pick a new --out-dir for this model, or drop the flags "
                               "that differ to continue that run")
    saved_data = (ckpt.get("data") or ckpt.get("loader") or {}).get("input_hash")
    if ckpt["tokenizer"] != meta["tokenizer"] or (saved_data is not None and saved_data != meta["input_hash"]):
        was = ckpt.get("train_config", {}).get("data", "other data")
        raise GPTCoreError(f"--out-dir {config.out_dir} holds a run trained on {was}, not on --data {config.data}, "
                           f"which {path} would resume: pick a new --out-dir for this data, or use that run's --data "
                           "to continue it")
