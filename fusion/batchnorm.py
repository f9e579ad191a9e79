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
    """Reset and re-estimate every BatchNorm's running statistics on ``inputs``, in place.

    For every BatchNorm channel ``c`` whose input on batch ``k`` of ``K`` is ``h_k``, one pass in train mode with
    ``momentum=None`` sets the cumulative averages

    .. math::

        \\mu_c = \\frac{1}{K} \\sum_k \\operatorname{mean}(h_{k,c}), \\qquad
        \\sigma^2_c = \\frac{1}{K} \\sum_k \\operatorname{var}(h_{k,c}) \\ \\text{(unbiased per batch)},

    the statistics of the fused network's own pre-activations rather than an average of its parents' (the "reset" of
    BatchNorm statistics in Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair",
    ICLR 2023). Batches smaller than 2 are skipped, since they carry no variance.
    Under ``torch.distributed`` each rank passes its block of the batches and the statistics are combined
    (:func:`combine_across_ranks`), so every rank holds the statistics of the whole of ``inputs``.

    Parameters
    ----------
    model : nn.Module
        Any network; its BatchNorm layers that track running statistics are re-estimated (momenta restored after).
    inputs : torch.Tensor
        ``(N, ...)`` training inputs, ``N >= 2``.
    device : torch.device, optional
        Where the passes run (the model's device when ``None``); the model is moved there.
    batch_size : int
        Inputs per forward pass.

    Returns
    -------
    nn.Module
        ``model`` itself, in eval mode.

    Raises
    ------
    DatasetError
        For fewer than two inputs.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import recompute_batchnorm
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    >>> x = 3 * torch.randn(512, 4) + 1
    >>> model = recompute_batchnorm(model, x, batch_size=128)
    >>> h = model[0](x).detach()
    >>> model.training, torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)
    (False, True)
    >>> model = recompute_batchnorm(model, x, batch_size=512)  # one batch: the variance of all inputs
    >>> torch.allclose(model[1].running_var, h.var(0), rtol=1e-4)
    True
    """
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
