"""Multi-process training under torchrun: who this process is, the process group, the sampler.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)
starts one process per device. Without those variables every collective here is the identity,
so the same Trainer code runs single-process unchanged. The backend follows the device: nccl for
CUDA tensors, gloo for CPU tensors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from instseg.errors import ConfigError, InstsegError

T = TypeVar("T")


@dataclass
class DistContext:
    """This process's place in a torchrun launch (rank 0 of 1 when launched plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    _owns_group: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DistContext:
        def read(name: str, default: int) -> int:
            value = environ.get(name, "").strip()
            if not value:
                return default
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None

        world = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        local_rank = read("LOCAL_RANK", 0)
        local_world = read("LOCAL_WORLD_SIZE", world)
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
            raise ConfigError(f"inconsistent launch: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local_rank} "
                              f"LOCAL_WORLD_SIZE={local_world} (start several processes with torchrun)")
        return cls(rank, world, local_rank, local_world)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        """Join the process group: nccl when this process drives a GPU, gloo on the CPU."""
        self.device = device
        if not self.enabled or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={self.world_size} but {' and '.join(missing)} not set: launch with torchrun")
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                device_id=device if device.type == "cuda" else None)
        self._owns_group = True

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collectives: the identity when single-process ------------------------------------
    def max(self, value: float) -> float:
        """The largest `value` over ranks: how processes agree to take the same branch."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so counts and loss sums stay exact enough)."""
        if not self.enabled or not values:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and hand its result - or its user-facing error - to every rank.

        Without this, an error on rank 0 (e.g. an unwritable --out) would leave the other ranks
        waiting in their next collective instead of exiting with the same message.
        """
        if not self.enabled:
            return fn()
        box: list[Any] = [None, None]
        if self.is_main:
            try:
                box[0] = fn()
            except InstsegError as exc:  # reported on every rank below, then re-raised
                box[1] = (type(exc), str(exc))
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            kind, message = box[1]
            raise kind(message)
        return box[0]

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks.

        Each rank's running statistics have seen only its own batches; their mean is the
        estimate over all the data, and it leaves every rank with the same model for
        validation and checkpoints.
        """
        if not self.enabled:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(self.world_size)


class GlobalBatchSampler(DistributedSampler):
    """A DistributedSampler that hands out whole global batches and can start mid-epoch.

    Shuffling is DistributedSampler's (a permutation seeded by `seed + epoch`; call
    `set_epoch` every epoch). Each optimizer step consumes one global batch of
    `world_size x accumulate x batch_size` indices, and micro-batch k of rank r is its slot
    `k * world_size + r`. So W processes with K accumulation steps see exactly the batches
    that one process with W*K accumulation steps sees, and a multi-GPU run can be reproduced
    on one device (the stock sampler deals indices rank-strided, so its per-rank batches
    match no single-process split). `set_start(step)` skips the first steps of the epoch -
    resuming mid-epoch - without loading them. An incomplete last global batch is dropped
    (a different random remainder each epoch); a dataset smaller than one global batch is
    repeated to fill one.
    """

    def __init__(self, dataset: Any, *, batch_size: int, accumulate: int = 1, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.global_batch = num_replicas * accumulate * batch_size
        self.steps_per_epoch = max(1, len(dataset) // self.global_batch)
        self.start = 0

    def set_start(self, step: int) -> None:
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"start step {step} outside the epoch's 0..{self.steps_per_epoch} steps")
        self.start = step

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)
        total = self.steps_per_epoch * self.global_batch
        if len(order) < total:
            order = order.repeat(math.ceil(total / len(order)))
        slots = order[:total].view(self.steps_per_epoch, self.accumulate, self.num_replicas, self.batch_size)
        return iter(slots[self.start:, :, self.rank, :].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.accumulate * self.batch_size
