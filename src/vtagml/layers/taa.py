"""TAA: task-adapted attention bias, a block-diagonal (N, N) term added to attention logits.

For conditioning vector ``c`` of a task: ``(gamma, beta) = FiLM(c)``, ``gamma, beta in R^m``;
``A_tilde = (1 + gamma) * A + beta`` with a learned ``A in R^{N x m}`` (broadcast over rows);
``B = blockdiag(A_tilde split row-wise into N/m blocks of m x m)``. ``B`` is shared by every
head and window of a sample. ``A`` and FiLM start at zero, so the bias starts at zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def block_diagonal_bias(a_tilde: Tensor) -> Tensor:
    """Arrange row blocks of ``a_tilde`` on a block diagonal.

    Args:
        a_tilde: (R, N, m) with m dividing N; rows ``k*m:(k+1)*m`` form block k.

    Returns:
        (R, N, N) with ``out[r, i, j] = a_tilde[r, i, j % m]`` when ``i // m == j // m``, else 0.

    >>> block_diagonal_bias(torch.arange(8.).view(1, 4, 2))[0]
    tensor([[0., 1., 0., 0.],
            [2., 3., 0., 0.],
            [0., 0., 4., 5.],
            [0., 0., 6., 7.]])
    """
    r, n, m = a_tilde.shape
    if n % m:
        raise ValueError(f"block size {m} must divide the token count {n}")
    blocks = n // m
    # (R, blocks, m, m) -> block diagonal via a one-hot over block pairs
    a = a_tilde.view(r, blocks, m, m)
    eye = torch.eye(blocks, dtype=a.dtype, device=a.device)
    out = torch.einsum("rbij,bc->rbicj", a, eye)  # (R, blocks, m, blocks, m)
    return out.reshape(r, n, n)


class TaskAdaptedAttentionBias(nn.Module):
    """Task-conditioned block-diagonal attention bias (one per adapted block).

    Args:
        cond_dim: size d of the conditioning vectors.
        num_tokens: tokens per attention window, N = window area.
        block_size: m, the side of each diagonal block (default: the window side).
    """

    def __init__(self, cond_dim: int, num_tokens: int, block_size: int):
        super().__init__()
        if num_tokens % block_size:
            raise ValueError(f"block_size {block_size} must divide num_tokens {num_tokens}")
        self.num_tokens, self.block_size = num_tokens, block_size
        self.pattern = nn.Parameter(torch.zeros(num_tokens, block_size))  # A
        self.film = nn.Linear(cond_dim, 2 * block_size)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, cond: Tensor) -> Tensor:
        """(R, d) conditioning vectors -> (R, N, N) attention biases."""
        gamma, beta = self.film(cond).chunk(2, dim=-1)  # (R, m) each
        a_tilde = (1.0 + gamma).unsqueeze(1) * self.pattern + beta.unsqueeze(1)  # (R, N, m)
        return block_diagonal_bias(a_tilde)
