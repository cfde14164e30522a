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


def _fp32(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Prediction and target in at least single precision (half precision is promoted, float64 stays)."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return pred.to(dtype), target.to(dtype)


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` where ``valid`` (broadcast to its shape), exactly zero with a zero
    gradient where nothing is valid. No host synchronization: masks select by ``where``, never
    by boolean indexing, whose output size the host would have to read."""
    mask = valid.expand_as(values)
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


def cross_entropy(logits: Tensor, target: Tensor, valid: Tensor, ignore_index: int = 255,
                  class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy over pixels whose class is not ``ignore_index`` and whose sample is valid.

    With ``class_weights`` (C,), the weighted mean ``sum w_y CE / sum w_y`` over those pixels (as
    ``F.cross_entropy(weight=...)`` averages), so the loss keeps its scale whatever the weights' sum.

    Args:
        logits: (B, C, H, W); target: long (B, H, W); valid: (B, 1, H, W).
    """
    target = torch.where(valid[:, 0], target, ignore_index)
    labelled = target != ignore_index
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if class_weights is None:
        total = labelled.sum().clamp_min(1)
    else:
        class_weights = class_weights.to(logits)
        total = torch.where(labelled, class_weights[target.clamp(0, len(class_weights) - 1)], 0.0).sum().clamp_min(1e-12)
    return F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index, reduction="sum") / total


def soft_jaccard(logits: Tensor, target: Tensor, valid: Tensor, ignore_index: int = 255, eps: float = 1e-6) -> Tensor:
    """``1 - soft IoU`` of the class probabilities with the one-hot target, averaged over the classes
    that occur among the batch's labelled pixels (mIoU's differentiable surrogate, as in Rahman &
    Wang 2016). Pixels of ``ignore_index`` or of invalid samples take no part; exactly zero with a
    zero gradient when no pixel is labelled.

    Args:
        logits: (B, C, H, W); target: long (B, H, W); valid: (B, 1, H, W).
    """
    num_classes = logits.shape[1]
    labelled = (valid[:, 0] & (target != ignore_index)).unsqueeze(1)  # (B, 1, H, W)
    probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(1) * labelled
    onehot = torch.zeros_like(probs).scatter_(1, target.clamp(0, num_classes - 1).unsqueeze(1), labelled.to(probs))
    inter = (probs * onehot).sum((0, 2, 3))
    truth = onehot.sum((0, 2, 3))
    union = probs.sum((0, 2, 3)) + truth - inter
    present = truth > 0
    return torch.where(present, 1 - inter / union.clamp_min(eps), 0.0).sum() / present.sum().clamp_min(1)


def l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean absolute error over valid pixels (all channels of a valid pixel count)."""
    pred, target = _fp32(pred, target)
    return masked_mean((pred - target).abs(), valid)


def _log_ratio(pred: Tensor, target: Tensor) -> Tensor:
    pred, target = _fp32(pred, target)
    return pred.clamp_min(1e-6).log() - target.clamp_min(1e-6).log()


def log_l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean ``|log pred - log target|`` over valid pixels: relative error, as the delta metrics count it."""
    return masked_mean(_log_ratio(pred, target).abs(), valid)


def silog(pred: Tensor, target: Tensor, valid: Tensor, variance_focus: float = 0.85) -> Tensor:
    """Scale-invariant log loss (Eigen et al., 2014) plus an absolute log-L1 term.

    Per image, with ``g = log pred - log target`` over its valid pixels: ``mean(g²) - λ mean(g)²``
    (λ = ``variance_focus``; 1 ignores the image's global scale, 0 is plain log-MSE) learns the
    scene's shape apart from its scale; ``mean|g|`` keeps the scale, as the delta metrics need.
    Images without a valid pixel contribute nothing.
    """
    mask = valid.expand_as(pred)
    g = torch.where(mask, _log_ratio(pred, target), 0.0)
    n = mask.flatten(1).sum(1)
    mean = g.flatten(1).sum(1) / n.clamp_min(1)
    var = g.pow(2).flatten(1).sum(1) / n.clamp_min(1) - variance_focus * mean.pow(2)
    has = (n > 0).to(var)
    return (var * has).sum() / has.sum().clamp_min(1) + masked_mean(g.abs(), mask)


def berhu(pred: Tensor, target: Tensor, valid: Tensor, ratio: float = 0.2) -> Tensor:
    """Reverse Huber loss: L1 below ``c = ratio * max|error|``, (e² + c²) / 2c above."""
    mask = valid.expand_as(pred)
    pred, target = _fp32(pred, target)
    err = torch.where(mask, (pred - target).abs(), 0.0)
    c = (ratio * err.amax()).detach().clamp_min(1e-6)
    return masked_mean(torch.where(err <= c, err, (err * err + c * c) / (2 * c)), mask)


def cosine(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``1 - cos(pred, target)`` over valid pixels; vectors along dim 1."""
    pred, target = _fp32(pred, target)
    cos = (unit_vectors(pred, eps=1e-8) * unit_vectors(target, eps=1e-8)).sum(1, keepdim=True)
    return masked_mean(1.0 - cos, valid)


def balanced_bce_map(logits: Tensor, target: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Per-pixel class-balanced binary cross-entropy: weight ``pos_weight`` on edges, the rest off."""
    logits, target = _fp32(logits, target)
    weight = pos_weight * target + (1.0 - pos_weight) * (1.0 - target)
    return weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def balanced_bce(logits: Tensor, target: Tensor, valid: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Mean of :func:`balanced_bce_map` over valid pixels."""
    return masked_mean(balanced_bce_map(logits, target, pos_weight), valid)
