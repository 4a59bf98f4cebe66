"""Settings: the generic Trainer's (minGPT's names) and the GPT-2 language-model recipe's, with its presets.

Each setting is declared once. TrainConfig, the recipe's, holds a GPTConfig (the model's fields) and a TrainerConfig
(the loop's) beside its own (data, evaluation, checkpoints). Flat names reach all three: the names don't overlap,
so `TrainConfig.from_preset("quickstart", n_layer=2, learning_rate=1e-3)` and train.py's flags need no prefixes.
"""

from dataclasses import dataclass, field, fields, replace

from ..device import check_device
from ..errors import GPTCoreError, check_range
from ..model import PRESETS, GPTConfig


@dataclass
class TrainerConfig:
    """The loop's settings. The first eight are minGPT's, with its defaults; the rest are gptcore's additions."""
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    num_workers: int = 4  # DataLoader worker processes
    max_iters: int | None = None  # optimizer steps; None runs until stopped
    batch_size: int = 64  # examples per micro-batch and process
    learning_rate: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1  # on weights of 2 or more dimensions only
    grad_norm_clip: float = 1.0  # 0 turns clipping off
    grad_accum_steps: int | None = 1  # micro-batches per optimizer step (None: 1, or what the recipe derives)
    warmup_iters: int = 0  # linear warmup from learning_rate / warmup_iters
    min_lr: float | None = None  # None keeps learning_rate after warmup; a value decays to it by cosine at max_iters
    dtype: str | None = None  # float32 or bfloat16 (autocast); None picks bfloat16 where it is faster
    compile: bool = False  # torch.compile the model (under fsdp: each block)
    # under torchrun: shard weights, gradients and AdamW state across the processes (FSDP2) instead of copying (DDP)
    fsdp: bool = False
    activation_checkpointing: bool = False  # keep only each block's input; recompute the rest in backward (less memory)
    seed: int = 1337  # the order a map-style dataset is shuffled in

    def validate(self) -> "TrainerConfig":
        """Checks every field (the one place that does); a GPTCoreError names the field, its value and the allowed
        range. Trainer(config, ...) calls it, so settings changed after get_default_config() are checked too."""
        if self.device != "auto":
            if not isinstance(self.device, str):
                raise GPTCoreError(f"device={self.device!r} is not allowed: it must be a name such as cpu or cuda")
            check_device(self.device)
        check_range("num_workers", self.num_workers, kind=int, low=0)
        if self.max_iters is not None:
            check_range("max_iters", self.max_iters, kind=int, low=1, hint=" (--max-iters, or --max-steps)")
        check_range("batch_size", self.batch_size, kind=int, low=1)
        check_range("learning_rate", self.learning_rate, low=0)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise GPTCoreError(f"betas={self.betas!r} is not allowed: it must be two numbers (beta1, beta2) in [0, 1)")
        for i, beta in enumerate(self.betas):
            check_range(f"betas[{i}]", beta, low=0, high=1, high_open=True, hint=" (--betas BETA1 BETA2)")
        check_range("weight_decay", self.weight_decay, low=0)
        check_range("grad_norm_clip", self.grad_norm_clip, low=0, hint=" (--grad-norm-clip or --grad-clip; 0: off)")
        if self.grad_accum_steps is not None:
            check_range("grad_accum_steps", self.grad_accum_steps, kind=int, low=1)
        check_range("warmup_iters", self.warmup_iters, kind=int, low=0, high=self.max_iters,
                    hint=" (--warmup-iters or --warmup-steps; at most max_iters)")
        if self.min_lr is not None:
            if self.max_iters is None:
                raise GPTCoreError("min_lr sets a cosine decay that ends at max_iters: set max_iters too")
            check_range("min_lr", self.min_lr, low=0, high=self.learning_rate, hint=" (at most learning_rate)")
        if self.dtype not in DTYPES:
            raise GPTCoreError(f"dtype={self.dtype!r} is not allowed: it must be one of "
                               f"{', '.join(d for d in DTYPES if d)} (or unset: bfloat16 where it is faster)")
        for name in ("compile", "fsdp", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise GPTCoreError(f"{name}={getattr(self, name)!r} is not allowed: it must be True or False")
        check_range("seed", self.seed, kind=int, low=0, high=2**63, high_open=True)
        return self


DTYPES = (None, "float32", "bfloat16")


@dataclass
class TrainConfig:
    """The GPT-2 language-model run (train.py). The defaults are build-nanogpt's GPT-2 (124M) recipe."""
    # data and output
    data: str = "data/pystdlib"  # a folder written by data/prepare.py
    out_dir: str = "out"
    init_from: str = "resume"  # resume (or scratch if out_dir has no checkpoint) | scratch | gpt2* | a HF folder
    # the model; its vocab_size comes from the data
    model: GPTConfig = field(default_factory=GPTConfig)
    # the loop: 0.5M-token steps over 10B tokens, lr 6e-4 warmed up over 715 steps then cosine-decayed to 10%
    # (the shard loader reads in the main process: it is fast, and its position is then exactly what was consumed)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        num_workers=0, max_iters=19_073, learning_rate=6e-4, grad_accum_steps=None, warmup_iters=715, min_lr=6e-5))
    # accumulation makes up total_batch_tokens per step (2**19, ~0.5M tokens as GPT-3 Small) unless
    # trainer.grad_accum_steps is given instead
    total_batch_tokens: int | None = 524_288
    # evaluation, logging, checkpoints
    eval_interval: int = 250
    eval_steps: int = 20  # val batches per eval, shared among the processes
    sample_tokens: int = 48  # length of the sample printed at every eval; 0 turns it off
    # HellaSwag (gptcore/eval) every this many steps and at the last; 0 is off. The gpt2-* presets turn it on
    # (every 250 steps, as build-nanogpt): it needs data in GPT-2 tokens. hellaswag_limit: its first N items
    # (None: all 10,042), for quicker CPU runs
    hellaswag_interval: int = 0
    hellaswag_limit: int | None = None
    # trackers beside metrics.jsonl, a comma list: tensorboard (<out_dir>/tensorboard), wandb (<out_dir>/wandb)
    log_to: str = ""
    wandb_project: str = "gptcore"
    save_interval: int = 1000
    keep_checkpoints: int = 3

    @classmethod
    def from_preset(cls, name: str | None, **overrides) -> "TrainConfig":
        """Defaults, then the preset's, then the overrides (flags); every name is flat (see flat_fields)."""
        if name is not None and name not in TRAIN_PRESETS:
            raise GPTCoreError(f"unknown training preset '{name}'; known presets: {', '.join(TRAIN_PRESETS)}")
        unknown = set(overrides) - set(flat_fields())
        if unknown:
            raise GPTCoreError(f"unknown training settings: {', '.join(sorted(unknown))}")
        settings = {**(TRAIN_PRESETS[name] if name else {}), **overrides}
        # of the two ways to size a step, the one given explicitly wins over what the preset says
        if "grad_accum_steps" in overrides and "total_batch_tokens" not in overrides:
            settings["total_batch_tokens"] = None
        if "total_batch_tokens" in overrides and "grad_accum_steps" not in overrides:
            settings["grad_accum_steps"] = None
        if "model_type" in overrides:  # a model_type flag replaces the preset's sizes
            settings = {k: v for k, v in settings.items() if k not in ("n_layer", "n_head", "n_embd") or k in overrides}
        c = cls()
        parts = {"model": {}, "trainer": {}, None: {}}
        for key, value in settings.items():
            parts[flat_fields()[key]][key] = value
        try:
            config = replace(c, model=replace(c.model, **parts["model"]), trainer=replace(c.trainer, **parts["trainer"]),
                             **parts[None])
        except TypeError as e:  # a value of the wrong kind that GPTConfig's own checks tripped over
            raise GPTCoreError(f"a setting has a value of the wrong type ({e})") from None
        return config.validate()

    def validate(self) -> "TrainConfig":
        """Checks every setting: the model's (GPTConfig.resolved), the loop's (TrainerConfig.validate) and the run's
        own, before anything is read or written; a GPTCoreError names the field, its value and the allowed range."""
        for name in ("data", "out_dir", "init_from"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise GPTCoreError(f"{name}={getattr(self, name)!r} is not allowed: it must be a non-empty path or name")
        self.model.resolved()
        self.trainer.validate()
        if self.total_batch_tokens is not None:
            check_range("total_batch_tokens", self.total_batch_tokens, kind=int, low=1)
        for name in ("eval_interval", "eval_steps", "save_interval", "keep_checkpoints"):
            check_range(name, getattr(self, name), kind=int, low=1)
        check_range("sample_tokens", self.sample_tokens, kind=int, low=0, hint=" (0 turns samples off)")
        return self

    def model_config(self, vocab_size: int) -> GPTConfig:
        return replace(self.model, vocab_size=vocab_size).resolved()


def flat_fields() -> dict[str, str | None]:
    """Every flat setting name -> the part of TrainConfig holding it: 'model', 'trainer', or None (TrainConfig's own).
    The model's vocab_size is left out: it comes from the data."""
    names = {f.name: None for f in fields(TrainConfig) if f.name not in ("model", "trainer")}
    names.update({f.name: "model" for f in fields(GPTConfig) if f.name != "vocab_size"})
    names.update({f.name: "trainer" for f in fields(TrainerConfig)})
    return names


def _gpt2_size(preset: str, lr, total_batch_tokens=524_288):
    # GPT-3 paper, table 2.1: same data and schedule, learning rate shrinking with size; min lr is 10% of max
    n_layer, n_head, n_embd = PRESETS[preset]
    return dict(data="data/fineweb-edu", n_layer=n_layer, n_head=n_head, n_embd=n_embd, learning_rate=lr,
                min_lr=lr / 10, total_batch_tokens=total_batch_tokens, batch_size=16, compile=True,
                hellaswag_interval=250)


# Expected wall time of each preset (2-core CPU, one GPU). CPU: quickstart as measured (bench_quickstart.py, a
# 2-core Xeon); the others projected from the FLOPs of their steps at the speed quickstart reaches there. GPU: from
# FLOPs at 40% of an H100's bf16 peak, and nanoGPT's ~3 minutes on an A100 for shakespeare-char: estimates, not runs.
PRESET_TIMES = {
    "quickstart": ("8 min", "under 1 min"),
    "shakespeare-char": ("about 19 hours", "about 3 min"),
    "gpt2-124m": ("about 3 years", "about 6 hours"),
    "gpt2-medium": ("years", "about 17 hours"),
    "gpt2-large": ("years", "about 1.5 days"),
    "gpt2-xl": ("years", "about 6 days"),
}

DEFAULT_PRESET = "quickstart"  # what `python train.py` runs
TRAIN_PRESETS = {
    # the default dataset on a CPU in under 10 minutes: a small model that learns to write Python-looking code
    "quickstart": dict(data="data/pystdlib", out_dir="out/quickstart", n_layer=4, n_head=4, n_embd=128, block_size=128,
                       batch_size=16, total_batch_tokens=None, max_iters=450, learning_rate=2e-3, min_lr=2e-4,
                       warmup_iters=30, eval_interval=50, eval_steps=10, save_interval=100),
    # nanoGPT's baby GPT on characters of Shakespeare
    "shakespeare-char": dict(data="data/shakespeare-char", out_dir="out/shakespeare-char", n_layer=6, n_head=6,
                             n_embd=384, block_size=256, dropout=0.2, batch_size=64, total_batch_tokens=None,
                             max_iters=5000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                             betas=(0.9, 0.99), eval_interval=250, eval_steps=50, save_interval=1000),
    # build-nanogpt: GPT-2 (124M) on 10B tokens of FineWeb-Edu
    "gpt2-124m": dict(data="data/fineweb-edu", out_dir="out/gpt2-124m", compile=True, hellaswag_interval=250),
    "gpt2-medium": _gpt2_size("gpt2-medium", 3e-4),
    "gpt2-large": _gpt2_size("gpt2-large", 2.5e-4),
    "gpt2-xl": _gpt2_size("gpt2-xl", 2e-4, total_batch_tokens=1_048_576),
}
