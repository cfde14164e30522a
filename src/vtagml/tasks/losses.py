"""Masked dense losses. Each returns a scalar mean over valid pixels and exactly zero (with a
zero gradient) when no pixel is valid, so absent labels never produce NaN.

Shapes: predictions and targets (B, C, H, W); ``valid`` bool (B, 1, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def unit_vectors(x: Tensor, dim: int = 1, eps: float = 1e-6) -> Tensor:
    """``x / max(|x|, eps)`` along ``dim``. Same as ``F.normalize``, which is far slower on CPU
    across the channel dimension of (B, C, H, W) maps."""
    return x / x.pow(2).sum(dim, keepdim=True).sqrt().clamp_min(eps)


def _mean_over(values: Tensor, count: Tensor | int, like: Tensor) -> Tensor:
    if int(count) == 0:
        return like.sum() * 0.0
    return values.sum() / count


def cross_entropy(logits: Tensor, target: Tensor, valid: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross-entropy over pixels whose class is not ``ignore_index`` and whose sample is valid.

    Args:
        logits: (B, C, H, W); target: long (B, H, W); valid: (B, 1, H, W).
    """
    target = torch.where(valid[:, 0], target, torch.full_like(target, ignore_index))
    count = (target != ignore_index).sum()
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return _mean_over(loss, count, logits)


def l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean absolute error over valid pixels (all channels of a valid pixel count)."""
    mask = valid.expand_as(pred)
    return _mean_over((pred[mask].float() - target[mask].float()).abs(), mask.sum(), pred)


def log_l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean ``|log pred - log target|`` over valid pixels: relative error, as the delta metrics count it."""
    mask = valid.expand_as(pred)
    err = pred[mask].float().clamp_min(1e-6).log() - target[mask].float().clamp_min(1e-6).log()
    return _mean_over(err.abs(), mask.sum(), pred)


def berhu(pred: Tensor, target: Tensor, valid: Tensor, ratio: float = 0.2) -> Tensor:
    """Reverse Huber loss: L1 below ``c = ratio * max|error|``, (e² + c²) / 2c above."""
    mask = valid.expand_as(pred)
    err = (pred[mask].float() - target[mask].float()).abs()
    if err.numel() == 0:
        return pred.sum() * 0.0
    c = (ratio * err.max()).detach().clamp_min(1e-6)
    return torch.where(err <= c, err, (err * err + c * c) / (2 * c)).mean()


def cosine(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``1 - cos(pred, target)`` over valid pixels; vectors along dim 1."""
    cos = (unit_vectors(pred.float(), eps=1e-8) * unit_vectors(target.float(), eps=1e-8)).sum(1, keepdim=True)
    return _mean_over(1.0 - cos[valid], valid.sum(), pred)


def balanced_bce_map(logits: Tensor, target: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Per-pixel class-balanced binary cross-entropy: weight ``pos_weight`` on edges, the rest off."""
    weight = pos_weight * target + (1.0 - pos_weight) * (1.0 - target)
    return weight * F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")


def balanced_bce(logits: Tensor, target: Tensor, valid: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Mean of :func:`balanced_bce_map` over valid pixels."""
    per_pixel = balanced_bce_map(logits, target, pos_weight)
    return _mean_over(per_pixel[valid], valid.sum(), logits)
