"""gptcore: GPT-2 in plain PyTorch that you can read, train, resume and sample from."""

from .errors import GPTCoreError
from .infer import Generator
from .model import GPT, GPTConfig
from .tokenizer import CharTokenizer, get_tokenizer, tokenizer_from_description
from .train import Trainer, TrainConfig, TrainerConfig

__all__ = ["GPT", "GPTConfig", "GPTCoreError", "Generator", "CharTokenizer", "get_tokenizer", "tokenizer_from_description",
           "Trainer", "TrainConfig", "TrainerConfig"]
