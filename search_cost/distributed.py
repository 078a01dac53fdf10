"""The search across processes: torch.distributed as torchrun starts it (one process per GPU with NCCL,
or per CPU process with gloo), DistributedDataParallel over the supernet's weights, the architecture
parameters' gradients averaged by hand.

The meaning is that of one process with the same global batch: every process draws the same batch order
and Gumbel noise, takes its slice of each global batch, scales its loss by its share of it, and
batch normalisation computes its statistics over the whole global batch (torch's SyncBatchNorm on GPUs;
on CPUs, where SyncBatchNorm does not run, `GlobalBatchNorm2d` below), so the weights and architecture
logits of a 2-process run equal those of a 1-process run up to floating-point summation order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes the architecture, checkpoints, plots and logs."""
        return self.rank == 0


ONE_PROCESS = Ranks()


def init_from_env(train_device: str) -> tuple[Ranks, str]:
    """The process group torchrun described in the environment (WORLD_SIZE > 1), joined once; and the
    device this process trains on (cuda:LOCAL_RANK under torchrun on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), train_device
    if not dist.is_initialized():
        backend = "nccl" if train_device.startswith("cuda") else "gloo"
        # long: rank 0 may fill the table first while the others wait
        dist.init_process_group(backend, timeout=timedelta(hours=6))
    if train_device.startswith("cuda"):
        train_device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(train_device)
    return Ranks(dist.get_rank(), dist.get_world_size()), train_device


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def average_gradients(parameters: list[torch.Tensor], ranks: Ranks) -> None:
    """Each parameter's gradient averaged over the processes (what DDP does for module parameters)."""
    if ranks.world == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= ranks.world


def global_sum(value: float, ranks: Ranks) -> float:
    if ranks.world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's slice of the batch (a differentiable
    all-reduce of the sums), for CPUs, where torch's SyncBatchNorm does not run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        wide = x.double()  # E[x^2] - E[x]^2 in float64: no cancellation when the mean is large
        count = torch.tensor([x.numel() / channels], dtype=wide.dtype, device=x.device)
        packed = all_reduce(torch.cat([wide.sum(dim=(0, 2, 3)), (wide * wide).sum(dim=(0, 2, 3)), count]))
        n = packed[-1]
        mean = packed[:channels] / n
        var = (packed[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        mean, var, n = mean.to(x.dtype), var.to(x.dtype), n.to(x.dtype)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1).clamp_min(1))
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def global_batch_norm(module: nn.Module, train_device: str) -> nn.Module:
    """`module` with its batch norms computing statistics over all processes' slices."""
    if train_device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            global_batch_norm(child, train_device)
    return module


def rank_slice(indices: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This process's part of a global batch's indices (every process's part, in order, makes the batch)."""
    return indices.tensor_split(ranks.world)[ranks.rank] if ranks.world > 1 else indices
