"""Bottleneck adapter with a skip from the previous adapter layer.

``b = Up(GELU(Down(TSN_b(f) + s_prev)))`` with ``Up`` zero-initialized, so ``b = 0`` at start.
"""

from __future__ import annotations

from torch import Tensor, nn

from vtagml.layers.tsn import TaskScaledNorm


class BottleneckAdapter(nn.Module):
    """Task-normalized bottleneck MLP C -> C/r -> C.

    Args:
        dim: channels C.
        cond_dim: conditioning size d.
        reduction: r, the bottleneck is ``max(1, C // r)`` wide.
    """

    def __init__(self, dim: int, cond_dim: int, reduction: int = 4):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(1, dim // reduction)
        self.norm = TaskScaledNorm(dim, cond_dim)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, cond: Tensor | None, skip: Tensor | None = None) -> Tensor:
        """x (R, H, W, C), cond (R, d) or None (a plain LayerNorm, no task conditioning), skip like
        x or None -> b (R, H, W, C)."""
        h = self.norm(x, cond)
        if skip is not None:
            h = h + skip
        return self.up(self.act(self.down(h)))
