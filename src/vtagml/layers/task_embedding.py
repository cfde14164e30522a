"""Learned task embeddings E (T, d) and affinity-weighted conditioning ``c = alpha @ E``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskEmbeddings(nn.Module):
    """One learned d-dimensional embedding per task.

    Args:
        num_tasks: T.
        dim: d (the paper uses 343 = 7 * 49 for windows of 7).
        init_std: standard deviation of the normal initialization.
    """

    def __init__(self, num_tasks: int, dim: int, init_std: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_tasks, dim) * init_std)

    def forward(self, alpha: Tensor) -> Tensor:
        """Mixing weights (R, T) -> conditioning vectors (R, d); alpha carries no gradient."""
        return alpha.detach().to(self.weight) @ self.weight
