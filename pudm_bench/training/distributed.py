"""Sums across data-parallel ranks that gradients flow through: the PU risk of the global batch under DDP.

Each rank computes its shard's sufficient statistics (``losses.risk_statistics``); ``global_sum`` adds them over
every rank before the risk and its correction are formed, so every rank holds the global batch's loss. Gradients:
the backward of the sum is again a sum over ranks, so rank r's parameters receive W * dL/dS * dS_r/dtheta, and
DDP's gradient averaging (division by W) leaves sum_r dL/dS * dS_r/dtheta: exactly the gradient of one process
given the concatenated batch (tests/test_distributed.py checks loss and every gradient with gloo).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GlobalSum(torch.autograd.Function):
    """all_reduce(SUM) with autograd. The same rule as ``torch.distributed.nn.functional.all_reduce``, which torch
    2.14 deprecates in favour of a private module (``torch.distributed._functional_collectives``): written here so
    that the step neither warns on every call nor depends on a private API."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``tensor`` over every rank (differentiable); the tensor itself on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GlobalSum.apply(tensor)
