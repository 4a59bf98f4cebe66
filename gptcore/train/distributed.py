"""Several processes, one run: torchrun's rank set-up and what DDP training needs from torch.distributed.

The only gptcore module that imports torch.distributed. The Trainer gets a Distributed from its caller and uses
only its methods, so training in one process never touches a process group.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


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

    def wrap(self, model, device_type: str):
        """The model as DDP: gradients averaged across processes during backward."""
        return DDP(model, device_ids=[self.local_rank] if device_type == "cuda" else None)

    @staticmethod
    def sync_gradients(ddp_model, sync: bool):
        """Whether the next backward averages gradients; off for all but the last micro-batch of a step."""
        ddp_model.require_backward_grad_sync = sync

    @staticmethod
    def mean(t: torch.Tensor) -> torch.Tensor:
        """The mean of t over the processes, in place."""
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        return t

    @staticmethod
    def any(flag: bool, device) -> bool:
        """True on every process when flag is True on any."""
        t = torch.tensor(float(flag), device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def init_distributed(device: str) -> Distributed:
    """Joins the process group when started by torchrun (NCCL on GPU, gloo on CPU); a no-op otherwise."""
    if "RANK" not in os.environ:
        return Distributed()
    d = Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
    return d


def destroy_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()
