"""TROA: gradient-based task affinities measured on the shared encoded embedding z.

``Z[i, j]`` is how much a step on task i's loss lowers task j's loss (i -> j), with losses
``L_j`` as optimized (already multiplied by their task weights) and ``G_i = dL_i/dz``:

- exact lookahead (TAG):  ``Z[i, j] = 1 - L_j(z - lr * G_i) / L_j(z)``
- first order (default):  ``Z[i, j] = lr * <G_i, G_j> / L_j(z)`` (Taylor expansion of the above)

The first-order form needs only the ``G_i`` from the training backward: each task branch gets
its own leaf copy of z and reads its ``.grad`` (no extra backward pass). The model is
conditioned on ``alpha = conditioning_weights(Z)``, a normalized statistic (no gradient).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def affinity_from_gram(gram: Tensor, losses: Tensor, lr: float) -> Tensor:
    """``Z[i, j] = lr * gram[i, j] / L_j`` from gradient inner products ``gram[i, j] = <G_i, G_j>``.

    Args:
        gram: (T, T) inner products (summed over processes under DDP).
        losses: (T,) task losses ``L_j(z)``; columns with ``L_j <= 0`` are 0.
        lr: lookahead step size eta.
    """
    gram, denom = gram.double(), losses.double().view(1, -1)
    return torch.where(denom > 0, lr * gram / denom.clamp_min(1e-30), torch.zeros_like(gram)).float()


def first_order_affinity(grads: Tensor, losses: Tensor, lr: float) -> Tensor:
    """First-order affinities from per-task embedding gradients.

    Args:
        grads: (T, ...) ``G_i = dL_i/dz`` for each task i (any trailing shape).
        losses: (T,) task losses ``L_j(z)``.
        lr: lookahead step size eta.

    Returns:
        (T, T) ``Z[i, j] = lr * <G_i, G_j> / L_j``.

    >>> first_order_affinity(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([1.0, 2.0]), lr=0.1)
    tensor([[0.1000, 0.0500],
            [0.1000, 0.1000]])
    """
    g = grads.reshape(grads.shape[0], -1).double()
    return affinity_from_gram(g @ g.T, losses, lr)


@torch.no_grad()
def exact_affinity(task_losses: Callable[[Tensor], Tensor], z: Tensor, grads: Tensor, lr: float) -> Tensor:
    """Exact lookahead affinities (T backward-free evaluations of every task loss).

    Args:
        task_losses: maps an embedding like ``z`` to the (T,) task losses at that embedding.
        z: the shared embedding, e.g. (B, H, W, C).
        grads: (T, *z.shape) gradients ``G_i`` of each task loss with respect to z.
        lr: lookahead step size eta.

    Returns:
        (T, T) ``Z[i, j] = 1 - L_j(z - lr * G_i) / L_j(z)``; columns with ``L_j(z) <= 0`` are 0.
    """
    base = task_losses(z).double()
    rows = [1.0 - task_losses(z - lr * grads[i]).double() / base.clamp_min(1e-30) for i in range(grads.shape[0])]
    out = torch.stack(rows)
    return torch.where(base.view(1, -1) > 0, out, torch.zeros_like(out)).float()


def conditioning_weights(affinity: Tensor) -> Tensor:
    """Mixing weights of task embeddings from affinities.

    ``alpha[t, :] = normalize(max(Z[:, t], 0))``: task t mixes the embeddings of the tasks whose
    steps help it, L1-normalized. A task that nothing helps keeps its own embedding.

    Args:
        affinity: (T, T) matrix Z. Returns (T, T), rows summing to 1.

    >>> conditioning_weights(torch.tensor([[1.0, 0.5], [-0.2, 1.0]]))
    tensor([[1.0000, 0.0000],
            [0.3333, 0.6667]])
    """
    helpful = affinity.detach().clamp_min(0).T
    total = helpful.sum(dim=1, keepdim=True)
    eye = torch.eye(affinity.shape[0], dtype=affinity.dtype, device=affinity.device)
    return torch.where(total > 0, helpful / total.clamp_min(1e-30), eye)


@torch.no_grad()
def update_affinity_ema(ema: Tensor, counts: Tensor, step: Tensor, momentum: float,
                        measured: Tensor | None = None) -> None:
    """In-place exponential moving average of affinity measurements.

    Entries measured for the first time take the measurement (replacing the identity prior);
    later ones move by ``ema = momentum * ema + (1 - momentum) * step``.

    Args:
        ema: (T, T) running affinity (updated in place).
        counts: (T, T) number of measurements so far per entry (updated in place).
        step: (T, T) this step's affinities.
        momentum: in [0, 1).
        measured: (T, T) bool, entries measured this step (default: all). Columns of tasks
            without labels in a batch are not measured.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    measured = torch.ones_like(ema, dtype=torch.bool) if measured is None else measured
    new = torch.where(counts > 0, momentum * ema + (1.0 - momentum) * step.to(ema), step.to(ema))
    ema.copy_(torch.where(measured, new, ema))
    counts.add_(measured.to(counts.dtype))
