"""TROA: scale-free task affinities measured on the shared encoded embedding z.

For task losses ``L_j(z)`` (as optimized, i.e. weighted) and embedding gradients
``g_i = dL_i/dz``, every task takes a lookahead step of the *same length* rho along its unit
gradient ``ĝ_i = g_i / |g_i|`` (DESIGN.md section 3):

- exact lookahead:   ``Ẑ[i, j] = 1 - L_j(z - rho ĝ_i) / L_j(z)``,  ``A[i, j] = Ẑ[i, j] / Ẑ[j, j]``
- first order:       ``A[i, j] = <g_i, g_j> / (|g_i| |g_j|)``  (the cosine; rho cancels)

``A[i, j]`` is the fraction of task j's own-step gain that a step on task i gives (i -> j;
rows are the task whose step is taken, the diagonal is 1). Neither a task's loss weight nor
the batch size changes A, so values compare across runs. The model is conditioned on
``alpha = conditioning_weights(A)``, a statistic without gradient.

:class:`TaskAffinity` owns the running state (EMA and measurement counts), the per-step
update, the cross-process reduction and the skipping of non-finite steps, like a torchmetrics
metric owns its states. The pure functions below are its maths.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def cosine_affinity(gram: Tensor) -> Tensor:
    """First-order affinities ``A[i, j] = gram[i, j] / sqrt(gram[i, i] gram[j, j])``.

    Args:
        gram: (T, T) gradient inner products ``<g_i, g_j>`` (summed over the batch and processes).

    Returns:
        (T, T) cosines in [-1, 1]; rows and columns of tasks with a zero gradient are 0.

    >>> cosine_affinity(torch.tensor([[4.0, 2.0], [2.0, 4.0]]))
    tensor([[1.0000, 0.5000],
            [0.5000, 1.0000]])
    """
    norm = gram.diagonal().clamp_min(0).sqrt()
    denom = norm.view(-1, 1) * norm.view(1, -1)
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram)).clamp(-1.0, 1.0)


def lookahead_affinity(gain: Tensor) -> Tensor:
    """Exact affinities from lookahead gains: ``A[i, j] = Ẑ[i, j] / Ẑ[j, j]``.

    Args:
        gain: (T, T) ``Ẑ[i, j] = 1 - L_j(z - rho ĝ_i) / L_j(z)``.

    Returns:
        (T, T) with diagonal 1; columns whose own-step gain is not positive are 0.

    >>> lookahead_affinity(torch.tensor([[0.2, -0.1], [0.1, 0.4]]))
    tensor([[ 1.0000, -0.2500],
            [ 0.5000,  1.0000]])
    """
    own = gain.diagonal().view(1, -1)
    return torch.where(own > 0, gain / own.clamp_min(1e-300), torch.zeros_like(gain))


def lookahead_gains(task_losses: Callable[[Tensor], Tensor], z: Tensor, grads: Tensor, step: float | Tensor) -> Tensor:
    """Lookahead gains ``Ẑ[i, j] = 1 - L_j(z - step ĝ_i) / L_j(z)`` (T + 1 loss evaluations).

    Args:
        task_losses: maps an embedding like ``z`` to the (T,) task losses at that embedding.
        z: the shared embedding, e.g. (B, H, W, C).
        grads: (T, *z.shape) gradients ``g_i`` of each task loss with respect to z.
        step: the step length rho (same for every task; a 0-dim tensor stays on the device).

    Returns:
        (T, T) float64; entries of tasks with a zero gradient (rows) or zero loss (columns) are 0.
        Nothing is read back to the host: a task with a zero gradient is evaluated at z itself.
    """
    with torch.no_grad():
        base = task_losses(z).double()
        norms = grads.reshape(grads.shape[0], -1).double().norm(dim=1)
        moved = norms != 0  # a NaN norm keeps its (NaN) row
        scales = torch.where(moved, step / norms.clamp_min(1e-300), torch.zeros_like(norms)).to(z.dtype)
        gains = torch.stack([1.0 - task_losses(z - scales[i] * grads[i].to(z.dtype)).double() / base.clamp_min(1e-300)
                             for i in range(grads.shape[0])])
        keep = moved.view(-1, 1) & (base > 0).view(1, -1)
    return torch.where(keep, gains, torch.zeros_like(gains))


def conditioning_weights(affinity: Tensor) -> Tensor:
    """Mixing weights of task embeddings from affinities.

    ``alpha[t, :] = normalize(max(A[:, t], 0))``: task t mixes the embeddings of the tasks whose
    steps help it, L1-normalized. A task that nothing helps keeps its own embedding.

    Args:
        affinity: (T, T) matrix A. Returns (T, T), rows summing to 1.

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
    later ones move by ``ema = momentum * ema + (1 - momentum) * step``. Unmeasured entries
    keep their value and count.

    Args:
        ema: (T, T) running affinity (updated in place).
        counts: (T, T) number of measurements so far per entry (updated in place).
        step: (T, T) this step's affinities.
        momentum: in [0, 1).
        measured: (T, T) bool, entries measured this step (default: all).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    measured = torch.ones_like(ema, dtype=torch.bool) if measured is None else measured.to(ema.device)
    new = torch.where(counts > 0, momentum * ema + (1.0 - momentum) * step.to(ema), step.to(ema))
    ema.copy_(torch.where(measured, new, ema))
    counts.add_(measured.to(counts.dtype))


def _all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over processes when a process group is running; identity otherwise (same call on every rank)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class TaskAffinity(nn.Module):
    """The TROA state of a model: the running affinity A and how it is measured.

    Buffers (in checkpoints): ``affinity`` (T, T), the EMA of per-step affinities (identity
    before any measurement), and ``counts`` (T, T), measurements per entry.

    Each update takes the embedding gradients of *every* task of the model (zeros for a task
    without labels in the step) and a per-task ``labelled`` flag. It runs the same collective
    (one fixed-shape all-reduce) on every process whatever each process's batch holds. A task
    unlabelled on every process leaves its row and column untouched; a step with a non-finite
    gradient anywhere (fp16 overflow) is skipped on every process.

    Args:
        num_tasks: T.
        momentum: EMA momentum in [0, 1).
        step_size: exact lookahead step rho, as a fraction of the RMS of z (per element).
        exact_samples: sub-batch size of the exact lookahead (the first samples of the batch).
    """

    def __init__(self, num_tasks: int, momentum: float = 0.9, step_size: float = 1e-3, exact_samples: int = 2):
        super().__init__()
        self.num_tasks = num_tasks
        self.configure(momentum, step_size, exact_samples)
        self.register_buffer("affinity", torch.eye(num_tasks))
        self.register_buffer("counts", torch.zeros(num_tasks, num_tasks))

    def configure(self, momentum: float = 0.9, step_size: float = 1e-3, exact_samples: int = 2) -> None:
        """Set the measurement options (validated)."""
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"TROA momentum must be in [0, 1), got {momentum}")
        if not step_size > 0:
            raise ValueError(f"TROA step_size must be > 0, got {step_size}")
        if exact_samples < 1:
            raise ValueError(f"TROA exact_samples must be >= 1, got {exact_samples}")
        self.momentum, self.step_size, self.exact_samples = float(momentum), float(step_size), int(exact_samples)

    def add_task(self) -> None:
        """Grow by one task with the identity prior (unmeasured): other tasks' alpha is unchanged."""
        t = self.num_tasks
        affinity, counts = torch.eye(t + 1).to(self.affinity), torch.zeros(t + 1, t + 1).to(self.counts)
        affinity[:t, :t], counts[:t, :t] = self.affinity, self.counts
        self.affinity, self.counts, self.num_tasks = affinity, counts, t + 1

    def conditioning_weights(self) -> Tensor:
        """(T, T) mixing weights alpha of task embeddings (rows sum to 1)."""
        return conditioning_weights(self.affinity)

    def _commit(self, step: Tensor, measured: Tensor, finite: Tensor | None = None) -> Tensor:
        """Fold a (T, T) step into the EMA at the ``measured`` (T, T) entries, unless the step (or
        ``finite``) says it is non-finite. Returns that verdict as a 0-dim bool tensor: deciding on
        the device keeps the training step free of host synchronizations."""
        ok = torch.isfinite(step).all() if finite is None else finite & torch.isfinite(step).all()
        update_affinity_ema(self.affinity, self.counts, torch.nan_to_num(step), self.momentum,
                            measured.to(ok.device) & ok)
        return ok

    @torch.no_grad()
    def update(self, grads: Tensor, labelled: Tensor, grad_scale: float = 1.0) -> Tensor:
        """First-order update from this step's embedding gradients.

        Args:
            grads: (T, B, ...) ``g_t = dL_t/dz`` of every task on this process's batch (as
                produced by the backward, possibly multiplied by an AMP ``grad_scale``).
            labelled: (T,) bool, tasks with at least one label in this process's batch.
            grad_scale: the loss scale of mixed precision (gradients are divided by it).

        Returns:
            Whether the step was recorded, a 0-dim bool tensor (False for a non-finite step).
        """
        flat = grads.reshape(self.num_tasks, -1).double() / grad_scale
        gram = flat @ flat.T
        # one all-reduce: the (T, T) gram over the global batch and the per-task label flags
        packed = _all_reduce_sum(torch.cat([gram, labelled.to(gram).view(-1, 1)], dim=1))
        gram, labelled_anywhere = packed[:, :-1], packed[:, -1] > 0
        tasks = labelled_anywhere & (gram.diagonal() > 0)
        # a non-finite gram (e.g. an fp16 overflow step, on any process) skips the whole step
        return self._commit(cosine_affinity(gram), tasks.view(-1, 1) & tasks.view(1, -1), torch.isfinite(gram).all())

    @torch.no_grad()
    def update_exact(self, task_losses: Callable[[Tensor], Tensor], z: Tensor, grads: Tensor,
                     labelled: Tensor, grad_scale: float = 1.0) -> Tensor:
        """Exact lookahead update on the first ``exact_samples`` samples.

        Args:
            task_losses: maps a sub-batch embedding (n, ...) to the (T,) losses of the sub-batch.
            z: (B, ...) this process's embedding.
            grads: (T, B, ...) embedding gradients from the training backward; their restriction
                to the sub-batch points along the sub-batch losses' gradients (per-sample
                branches, so no extra backward is needed).
            labelled: (T,) bool, tasks with a label in the sub-batch.
            grad_scale: the loss scale of mixed precision.

        Under DDP each process measures its own sub-batch; the gains are averaged over the
        processes that measured them, with one fixed-shape all-reduce.
        """
        n = min(self.exact_samples, z.shape[0])
        sub, g = z[:n], grads[:, :n].double() / grad_scale
        step = self.step_size * sub.double().pow(2).mean().sqrt() * math.sqrt(sub.numel())  # 0-dim, on the device
        finite = torch.isfinite(g).all()
        gains = lookahead_gains(task_losses, sub, torch.where(finite, g, torch.zeros_like(g)), step)
        finite = finite & torch.isfinite(gains).all()
        ok = labelled.to(gains.device) & (gains.diagonal() > 0)
        mask = (ok.view(-1, 1) & ok.view(1, -1)).double()
        t = self.num_tasks
        local = torch.cat([torch.nan_to_num(gains * mask).view(-1), mask.view(-1), (~finite).double().view(1)])
        total = _all_reduce_sum(local)
        gain_sum, measured_count = total[: t * t].view(t, t), total[t * t: 2 * t * t].view(t, t)
        mean_gain = gain_sum / measured_count.clamp_min(1)
        return self._commit(lookahead_affinity(mean_gain), measured_count > 0, total[-1] == 0)
