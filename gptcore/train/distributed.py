"""Several processes, one run: torchrun's rank set-up and what DDP and FSDP training need from torch.distributed.

The only gptcore module that imports torch.distributed. The Trainer gets a Distributed from its caller and uses
only its methods, so training in one process never touches a process group.

DDP keeps a whole copy of the weights, gradients and AdamW state on every process; FSDP (PyTorch's FSDP2,
fully_shard) keeps 1/N of each and gathers a block's weights only while it computes, for models whose 16 bytes per
parameter don't fit one device. FSDP's modules are imported by the methods that use them: they take over a second
to import, which runs without FSDP shouldn't pay.
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
    def shard(model, blocks):
        """FSDP2 in place: each of blocks (the transformer blocks) its own unit, whose weights are gathered just for
        its forward and backward, then the root, which holds the rest (embeddings, final norm). Afterwards the
        parameters are sharded DTensors: make the optimizer after this."""
        from torch.distributed.fsdp import fully_shard
        for block in blocks:
            fully_shard(block)
        fully_shard(model)

    @staticmethod
    def sync_gradients(model, sync: bool):
        """Whether the next backward averages (DDP) or reduce-scatters (FSDP) gradients; off for all but the last
        micro-batch of a step, which then syncs the sum of them all."""
        if isinstance(model, DDP):
            model.require_backward_grad_sync = sync
        else:  # an FSDP module
            model.set_requires_gradient_sync(sync)

    @staticmethod
    def full_tensor(t: torch.Tensor) -> torch.Tensor:
        """A sharded FSDP result (the gradient norm) as a plain tensor, the same on every process."""
        from torch.distributed.tensor import DTensor
        return t.full_tensor() if isinstance(t, DTensor) else t

    @staticmethod
    def full_state_dicts(model, optimizer=None) -> tuple[dict, dict | None]:
        """(model, optimizer) state dicts of an FSDP model gathered whole onto rank 0's CPU, the other ranks getting
        empty ones; a collective, so every process calls it. The model's is an ordinary state dict (same keys and
        shapes as without FSDP); the optimizer's keys its state by parameter name instead of number."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=options)
        return model_state, None if optimizer is None else get_optimizer_state_dict(model, optimizer, options=options)

    @staticmethod
    def load_full_state_dicts(model, optimizer, model_state: dict, optimizer_state: dict):
        """The inverse of full_state_dicts: every process passes the whole state dicts and keeps its shard."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

    @staticmethod
    def mean(t: torch.Tensor) -> torch.Tensor:
        """The mean of t over the processes, in place."""
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        return t

    @staticmethod
    def all_gather_object(obj) -> list:
        """Every process's obj (pickled), in rank order, on every process: for small results such as eval scores."""
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

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
