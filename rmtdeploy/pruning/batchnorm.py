"""Re-estimating BatchNorm statistics after channels were removed (CNNs, when data is at hand)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from rmtdeploy.errors import RmtdeployError


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable, *, max_batches: int | None = None
) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from ``batches`` (tensors, or
    tuples/lists whose first item is the input) as a cumulative average (momentum None).

    Only the BatchNorm layers run in train mode: dropout and drop-path stay off so the statistics describe
    the eval-time activations. Returns ``model`` with its modes and momenta restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    batches = iter(batches)
    first = next(batches, None)
    if first is None:  # checked before the reset, which would otherwise leave the model without statistics
        raise RmtdeployError("recalibrate_batchnorm needs at least one batch of inputs")
    device = next(model.parameters()).device
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        seen, batch = 0, first
        while batch is not None and (max_batches is None or seen < max_batches):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs.to(device))
            seen += 1
            batch = next(batches, None)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return model
