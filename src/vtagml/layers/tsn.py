"""TSN: task-scaled LayerNorm, ``(x - mean)/std * g * (1 + dg(c)) + b + db(c)``.

``g, b`` come from the LayerNorm it replaces (frozen unless the block is trained); ``dg, db``
are linear in the conditioning vector c and zero-initialized, so TSN starts as that LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskScaledNorm(nn.Module):
    """LayerNorm over the last dim whose affine terms are modulated per task.

    Args:
        dim: normalized (channel) size C.
        cond_dim: conditioning size d.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.delta_scale = nn.Linear(cond_dim, dim)
        self.delta_shift = nn.Linear(cond_dim, dim)
        for lin in (self.delta_scale, self.delta_shift):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @classmethod
    def from_layernorm(cls, norm: nn.LayerNorm, cond_dim: int) -> "TaskScaledNorm":
        """A TSN that starts as ``norm`` (weights copied)."""
        if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
            raise TypeError(f"TSN replaces a 1-D nn.LayerNorm, got {norm!r}")
        tsn = cls(norm.normalized_shape[0], cond_dim, norm.eps)
        with torch.no_grad():
            if norm.weight is not None:
                tsn.weight.copy_(norm.weight)
            if norm.bias is not None:
                tsn.bias.copy_(norm.bias)
        return tsn

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """x (R, ..., C), cond (R, d) -> (R, ..., C); ``cond=None``: the plain LayerNorm (g, b)."""
        if cond is None:
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.dim,)
        scale = self.weight * (1.0 + self.delta_scale(cond)).view(shape)
        shift = self.bias + self.delta_shift(cond).view(shape)
        return F.layer_norm(x, (self.dim,), None, None, self.eps) * scale + shift
