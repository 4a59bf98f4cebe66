"""Training: the generic Trainer (loop.py), its settings (config.py), and the GPT-2 language-model recipe that
train.py runs (recipe.py, with its callbacks.py). distributed.py is imported by the recipe only, under torchrun."""

from .config import TRAIN_PRESETS, TrainConfig, TrainerConfig
from .loop import Trainer

__all__ = ["TRAIN_PRESETS", "TrainConfig", "Trainer", "TrainerConfig"]
