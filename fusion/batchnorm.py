"""BatchNorm running statistics recomputed after fusion.

Averaged or transported running means and variances no longer describe the fused network's pre-activations, so
they are recomputed from training data: every BatchNorm layer is reset and given ``momentum=None``, which makes its
running statistics the exact (cumulative) average over the batches of one pass in train mode, not an exponential one.
"""

from __future__ import annotations

import torch
from torch import nn

from fusion.distributed import all_reduce_sum, batch_share, batches_shared
from fusion.errors import DatasetError
from fusion.groups import NORMS


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, NORMS) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, inputs: torch.Tensor, device: torch.device | None = None, batch_size: int = 256
) -> nn.Module:
    """Reset and re-estimate every BatchNorm's running statistics on ``inputs`` (in place; returns the model in eval
    mode). Batches smaller than 2 are skipped, since they carry no variance. Under ``torch.distributed`` each rank
    passes its block of the batches and the statistics are combined (:func:`combine_across_ranks`), so every rank
    holds the statistics of the whole of ``inputs``."""
    if len(inputs) < 2:
        raise DatasetError("recomputing BatchNorm statistics needs at least two training inputs")
    device = device or next(model.parameters()).device
    norms = [m for m in model.modules() if isinstance(m, NORMS) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train().to(device)
    try:
        for start in batch_share(len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            if len(batch) >= 2:
                model(batch.to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    if batches_shared(len(inputs), batch_size):
        for norm in norms:
            combine_across_ranks(norm)
    return model


def combine_across_ranks(norm: nn.Module) -> None:
    """Each rank's running statistics (the average over its batches) into the average over every rank's batches,
    weighted by the batches each rank saw: what one process computes over all of them."""
    count = norm.num_batches_tracked.to(norm.running_mean.dtype)
    total = all_reduce_sum(count.clone())
    for buffer in (norm.running_mean, norm.running_var):
        all_reduce_sum(buffer.mul_(count)).div_(total.clamp_min(1))
    norm.num_batches_tracked.copy_(total.to(norm.num_batches_tracked.dtype))
