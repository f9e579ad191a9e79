"""Data parallelism over ``torch.distributed`` for the analyses and fusion's statistics: each rank holds a contiguous
shard of the analysed sample (or a block of whole batches, :func:`batch_share`, where statistics are per batch), and
sums over examples (losses, correct counts, Hessian-vector products, neuron statistics, Gram products of activations)
are all-reduced, so N ranks compute what one process computes, to float tolerance (the order of the sums differs).

A run is distributed when ``torchrun`` (or any launcher setting ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``) started it with more than one process: :func:`init_from_environment` joins the group, NCCL when
CUDA is available, gloo otherwise. Every rank runs the same seeded computation; only rank 0 writes to the workspace
and prints (:func:`is_writer`). Without a process group every function here is the single-process identity.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Rank 0 (or the only process): the one that writes results and prints."""
    return rank() == 0


def shard(count: int) -> slice:
    """This rank's contiguous share of ``count`` items (the first ``count % world`` ranks take one more)."""
    size, index = world_size(), rank()
    base, extra = divmod(count, size)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def batch_share(count: int, batch_size: int) -> list[int]:
    """The starts of this rank's batches of ``count`` items in batches of ``batch_size``: a contiguous block of whole
    batches (:func:`shard` over the batches), so that per-batch statistics are those of one process. With fewer
    batches than ranks every rank takes every batch, and the caller must not reduce (:func:`batches_shared`)."""
    starts = list(range(0, count, batch_size))
    return starts[shard(len(starts))] if batches_shared(count, batch_size) else starts


def batches_shared(count: int, batch_size: int) -> bool:
    """Whether :func:`batch_share` splits the batches over the ranks (a process group, and a batch for each)."""
    return active() and -(-count // batch_size) >= world_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (and returned); unchanged in a single process. A CPU tensor goes
    through the group as it is (gloo); with NCCL it visits the rank's CUDA device."""
    if not active():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.cuda()
        dist.all_reduce(moved)
        tensor.copy_(moved.to(tensor.device))
        return tensor
    dist.all_reduce(tensor)
    return tensor


def init_from_environment(timeout_seconds: float = 1800.0) -> bool:
    """Join the process group described by the launcher's environment (``WORLD_SIZE`` > 1); returns whether this
    run is distributed. With CUDA each rank takes the device ``LOCAL_RANK``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return active()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
