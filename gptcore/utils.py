"""Small helpers minGPT's scripts import from mingpt.utils."""

import random

import numpy as np
import torch


def set_seed(seed: int):
    """Seeds every RNG a run draws from: Python's, NumPy's and torch's (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
