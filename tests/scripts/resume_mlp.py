"""A non-GPT run for the resume test: an MLP regressor with dropout on a map-style Dataset read by DataLoader workers,
checkpointed by gptcore's Checkpoints callback, resumed from the newest checkpoint when there is one.

python tests/scripts/resume_mlp.py OUT_DIR MAX_ITERS NUM_WORKERS SECONDS_PER_STEP
"""

import sys
import time

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from gptcore import Trainer
from gptcore.checkpoint import latest_checkpoint
from gptcore.train.callbacks import Checkpoints, MetricsFile


class Wave(Dataset):
    """y = sin(x0) + x1 / 2 + noise; example i is a function of i alone, so workers need no shared RNG."""

    def __len__(self):
        return 200

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return x, (x[0].sin() + x[1] / 2 + 0.1 * torch.randn(1, generator=g))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 1))

    def forward(self, x, y=None):
        out = self.net(x)
        return out, None if y is None else F.mse_loss(out, y)


out_dir, max_iters, num_workers, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.manual_seed(0)
config = Trainer.get_default_config()
config.device, config.dtype, config.num_workers = "cpu", "float32", num_workers
config.max_iters, config.batch_size, config.grad_accum_steps = max_iters, 16, 2
config.learning_rate, config.warmup_iters, config.min_lr = 1e-2, 5, 1e-3
trainer = Trainer(config, MLP(), Wave())
trainer.add_callbacks(MetricsFile(f"{out_dir}/metrics.jsonl"))
trainer.add_callbacks(Checkpoints(out_dir, interval=5, keep=2, extra=lambda t: {}))
trainer.add_callback("on_batch_end", lambda t: time.sleep(pause))
if latest_checkpoint(out_dir):
    trainer.load_state_dict(torch.load(latest_checkpoint(out_dir), weights_only=True))
    print(f"resuming at step {trainer.iter_num}")
trainer.run()
