"""Experiment trackers as Trainer callbacks: TensorBoard and Weights & Biases (online, or offline with no account).

Each logs, after every step, the numbers of trainer.record at step trainer.iter_num (loss, lr, grad_norm, and
whatever other callbacks added before it: tok_per_s, mfu, val_loss, ...), its text (the recipe's "sample") as text,
and the run's settings once as hyper-parameters. Only the main process logs. A resumed run (iter_num > 0 at the
start) continues the same tracker run: TensorBoard's log dir with its steps past the checkpoint purged, W&B's run id.

    trainer.add_callbacks(TensorBoardCallback("out/tensorboard"))
    trainer.add_callbacks(WandbCallback(project="sorting", dir="out"))

Neither package is a dependency of gptcore: pip install -r requirements-trackers.txt.
"""

import dataclasses
import os

from ..errors import GPTCoreError
from ..fileio import atomic_path

TRACKERS = ("tensorboard", "wandb")
INSTALL = "pip install -r requirements-trackers.txt"


def parse_trackers(log_to: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; '' -> []. An unknown name is an error."""
    names = [n.strip() for n in log_to.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise GPTCoreError(f"unknown tracker '{unknown[0]}' in log_to; choose from {', '.join(TRACKERS)} "
                           f"(comma-separated, e.g. --log-to tensorboard,wandb)")
    return list(dict.fromkeys(names))


def flatten(settings, prefix: str = "") -> dict:
    """A (nested) dataclass or dict -> {'model.n_layer': 12, ...}, in types trackers accept (None, tuples: as str)."""
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def _scalars(record: dict) -> dict:
    """The record's numbers, but the step itself (bools are ints to Python: left out too)."""
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _texts(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, str)}


class TensorBoardCallback:
    """Writes trainer.record to TensorBoard event files in log_dir, one scalar per key, at step trainer.iter_num.

    hparams: the settings to show in TensorBoard's HParams tab (default: trainer.config)."""

    def __init__(self, log_dir: str, hparams=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams as hparams_summaries
        except ImportError:
            raise GPTCoreError(f"TensorBoard logging needs the tensorboard package: pip install tensorboard "
                               f"(or {INSTALL})") from None
        self._writer_class, self._hparams_summaries = SummaryWriter, hparams_summaries
        self.log_dir, self.hparams = log_dir, hparams
        self.writer = None

    def on_train_start(self, trainer):
        if not trainer.is_main:
            return
        # resuming at step N: the killed run may have logged past N; purge_step hides its steps N+1 onwards, so the
        # log reads as one run (TensorBoard's own readers drop them)
        self.writer = self._writer_class(self.log_dir, purge_step=trainer.iter_num + 1 if trainer.iter_num else None)
        # in this run's own event file, not add_hparams' separate sub-run: one run, one folder. The HParams tab shows
        # the loss scalars beside them.
        settings = flatten(self.hparams if self.hparams is not None else trainer.config)
        for summary in self._hparams_summaries(settings, dict.fromkeys(("loss", "val_loss"))):
            self.writer.file_writer.add_summary(summary)

    def on_batch_end(self, trainer):
        if self.writer is None:
            return
        for key, value in _scalars(trainer.record).items():
            self.writer.add_scalar(key, value, trainer.iter_num)
        for key, value in _texts(trainer.record).items():
            self.writer.add_text(key, value, trainer.iter_num)
        # every step on disk before any checkpoint after it: a resume then finds no gap
        self.writer.flush()

    def on_train_end(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbCallback:
    """Logs trainer.record to a Weights & Biases run at step trainer.iter_num.

    dir: where W&B writes (its wandb/ folder, offline runs included) and where the run id is kept, so that a resumed
    Trainer continues the same run. Offline with no account: WANDB_MODE=offline; upload later with `wandb sync`.
    config: the settings logged as the run's config (default: trainer.config). Other keywords go to wandb.init.
    """

    def __init__(self, project: str, dir: str = ".", name: str | None = None, config=None, **init_kwargs):
        try:
            import wandb
        except ImportError:
            raise GPTCoreError(f"W&B logging needs the wandb package: pip install wandb (or {INSTALL})") from None
        self.wandb = wandb
        self.project, self.dir, self.name, self.config, self.init_kwargs = project, dir, name, config, init_kwargs
        self.id_path = os.path.join(dir, "wandb-run-id")
        self.run = None

    def on_train_start(self, trainer):
        if not trainer.is_main:
            return
        os.makedirs(self.dir, exist_ok=True)
        # a resumed Trainer continues the run it started; a fresh one (step 0) starts a new run
        run_id = None  # W&B makes one, saved below
        if trainer.iter_num > 0 and os.path.exists(self.id_path):
            with open(self.id_path) as f:
                run_id = f.read().strip()
        config = flatten(self.config if self.config is not None else trainer.config)
        # "allow", not "must": an offline run the server has never seen resumes too. Steps a killed run logged past
        # its checkpoint are already in the run, with the losses the resumed run logs again (resume is exact); W&B keeps
        # the first and drops the repeats.
        self.run = self.wandb.init(project=self.project, name=self.name, dir=self.dir, id=run_id,
                                   resume="allow" if run_id else None, config=config, **self.init_kwargs)
        with atomic_path(self.id_path) as tmp, open(tmp, "w") as f:
            f.write(self.run.id + "\n")

    def on_batch_end(self, trainer):
        if self.run is None:
            return
        record = {**_scalars(trainer.record), **_texts(trainer.record)}
        self.run.log(record, step=trainer.iter_num)

    def on_train_end(self, trainer):
        if self.run is not None:
            self.run.finish()
            self.run = None
