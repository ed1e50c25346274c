"""Training on several processes: torchrun and DistributedDataParallel, one process per device.

``torchrun --nproc_per_node N -m edge_yolov9.cli train ...`` starts N copies of the command; each learns its
place (rank, local rank, world size) from the environment torchrun sets. ``--batch`` stays the global batch:
every optimizer step sees the same images in the same order whatever the number of processes (each process
takes its contiguous share of each global batch, see :class:`GlobalBatchSampler`), so the nominal batch, the
gradient accumulation and the learning rates are those of a one-process run. Rank 0 alone validates, writes
checkpoints, results and plots, and logs; the others wait for it.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from edge_yolov9.errors import EdgeYoloError

logger = logging.getLogger(__name__)

# How long the other ranks wait for rank 0's validation and checkpoint of an epoch (a large val set on a slow
# disk takes many minutes; PyTorch's default is 10 minutes for NCCL).
WAIT_FOR_RANK_0 = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes (one, unless torchrun started several)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, saves and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> "World":
        """The world torchrun describes in RANK, LOCAL_RANK and WORLD_SIZE (one process when they are unset)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), size)


def join_group(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this process's device: on CUDA its own GPU
    (``cuda:LOCAL_RANK``)."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise EdgeYoloError(f"Process {world.rank} has local rank {world.local_rank}, but this machine has "
                                f"{torch.cuda.device_count()} CUDA devices",
                                "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=WAIT_FOR_RANK_0,
                                device_id=device if device.type == "cuda" else None)
    return device


def leave_group(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def quiet_unless_main(world: World) -> None:
    """Other ranks log warnings and errors only: one log, rank 0's, says what the run does."""
    if not world.main:
        logging.getLogger("edge_yolov9").setLevel(logging.WARNING)


def local_batch(batch: int, world: World) -> int:
    """This process's share of the global ``batch``."""
    if batch % world.size:
        raise EdgeYoloError(f"--batch {batch} (the global batch) does not split over {world.size} processes",
                            f"use a multiple of {world.size}, e.g. --batch {math.ceil(batch / world.size) * world.size}")
    return batch // world.size


class GlobalBatchSampler(torch.utils.data.Sampler[int]):
    """The epoch's shuffled order (from the seed and the epoch) cut into global batches of ``batch`` images;
    this rank yields its contiguous share of each. A last global batch that does not split evenly is filled up
    from the start of the order (as DistributedSampler pads), so every rank takes as many steps."""

    def __init__(self, length: int, batch: int, world: World, seed: int) -> None:
        self.length, self.batch, self.world, self.seed = length, batch, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        for start in range(0, self.length, self.batch):
            chunk = order[start:start + self.batch]
            short = -len(chunk) % self.world.size
            yield chunk + [order[i % self.length] for i in range(short)]

    def __iter__(self) -> Iterator[int]:
        for chunk in self._global_batches():
            share = len(chunk) // self.world.size
            yield from chunk[self.world.rank * share:(self.world.rank + 1) * share]

    def __len__(self) -> int:
        return sum(len(chunk) // self.world.size for chunk in self._global_batches())


def wrap(model: nn.Module, world: World, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """``model`` as the training step runs it: DistributedDataParallel over the world (with SyncBatchNorm when
    asked for), or ``model`` itself in a one-process run."""
    if sync_batchnorm and not world.distributed:
        logger.warning("--sync-bn has no effect in a one-process run")
    if not world.distributed:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise EdgeYoloError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU)",
                                "leave out --sync-bn, or train on GPUs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's ``value``, on every rank (pickled: for small things, a run name, a checkpoint's state)."""
    if not world.distributed:
        return value
    box = [value if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module, world: World) -> None:
    """Rank 0's BatchNorm statistics on every rank (each rank's last forward pass updated its own), so the EMA
    of the weights, which averages them in, stays the same everywhere."""
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def mean_over_ranks(values: Sequence[float], count: int, world: World) -> tuple[list[float], int]:
    """The ``count``-weighted mean of per-rank means ``values``, and the total count."""
    if not world.distributed:
        return list(values), count
    sums = torch.tensor([*(v * count for v in values), count], dtype=torch.float64)
    dist.all_reduce(sums)
    total = int(sums[-1].item())
    return [float(s) / max(total, 1) for s in sums[:-1]], total


def launch(devices: str, argv: list[str]) -> int:
    """``--device 0,1``: the same command under torchrun, one process per listed GPU; its exit code."""
    import subprocess

    if not torch.cuda.is_available():
        raise EdgeYoloError(f"--device {devices} names CUDA devices, but CUDA is not available",
                            "train on one device (--device cpu), or on CPUs with torchrun --nproc_per_node N -m "
                            "edge_yolov9.cli train --device cpu ...")
    try:
        gpus = [int(d) for d in devices.split(",") if d.strip()]
    except ValueError:
        raise EdgeYoloError(f"--device {devices}: a list of devices is of CUDA device numbers",
                            "write e.g. --device 0,1") from None
    command, env = launch_command(gpus, argv)
    logger.info("Starting %d processes: %s", len(gpus), " ".join(command))
    return subprocess.call(command, env=env)


def launch_command(devices: Sequence[int], argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The torchrun command (and environment) that runs the CLI's ``argv`` (``train ... --device 0,1``) on the
    CUDA ``devices``, one process each; each process then sees its own GPU as ``cuda``."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
    arguments, rest = [], list(argv)
    while rest:
        argument = rest.pop(0)
        if argument == "--device" and rest:
            rest.pop(0)
            argument = "--device=cuda"
        elif argument.startswith("--device="):
            argument = "--device=cuda"
        arguments.append(argument)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(devices)}",
               "-m", "edge_yolov9.cli", *arguments]
    return command, env
