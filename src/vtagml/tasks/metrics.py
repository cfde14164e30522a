"""Split-level dense-prediction metrics as torchmetrics ``Metric`` s (DDP-correct sums).

Every metric keeps sufficient statistics (sums and counts, or a fixed histogram) reduced with
``"sum"`` across processes and divides only in ``compute``, so a split's value does not
depend on how it was batched or sharded. Semantic segmentation uses torchmetrics'
``MulticlassJaccardIndex`` / ``MulticlassAccuracy`` directly (see :mod:`vtagml.tasks.builtin`).

All ``update`` methods take ``valid``: a bool mask (B, 1, H, W) of pixels that carry a label.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from vtagml.tasks.losses import unit_vectors

# --------------------------------------------------------------------------- depth


def _depth_stats(pred: Tensor, target: Tensor, valid: Tensor, threshold: float = 1.25) -> Tensor:
    """(sum squared error, sum |p - t| / t, count max(p/t, t/p) < threshold, count) on valid pixels."""
    p, t = pred[valid].double(), target[valid].double()
    if p.numel() == 0:
        return torch.zeros(4, dtype=torch.float64, device=pred.device)
    ratio = torch.maximum(p / t, t / p.clamp_min(1e-12))
    return torch.stack([((p - t) ** 2).sum(), ((p - t).abs() / t).sum(),
                        (ratio < threshold).sum().double(), torch.tensor(float(p.numel()), device=p.device,
                                                                          dtype=torch.float64)])


class _DepthMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, threshold: float = 1.25, **kwargs):
        super().__init__(**kwargs)
        if threshold <= 1.0:
            raise ValueError(f"threshold must be > 1, got {threshold}")
        self.threshold = threshold
        self.add_state("stats", torch.zeros(4, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        self.stats += _depth_stats(pred, target, valid, self.threshold)


class DepthRMSE(_DepthMetric):
    r"""Root mean squared error over all valid pixels of the split, in metres.

    .. math:: \sqrt{\tfrac{1}{N} \sum_i (p_i - t_i)^2}

    >>> m = DepthRMSE()
    >>> m.update(torch.tensor([1., 2., 4., 9.]), torch.tensor([1., 1., 4., 0.]), torch.tensor([1, 1, 1, 0]).bool())
    >>> round(m.compute().item(), 6)
    0.57735
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return (self.stats[0] / self.stats[3].clamp_min(1)).sqrt().float()


class DepthAbsRel(_DepthMetric):
    r"""Mean absolute relative error :math:`\tfrac{1}{N} \sum_i |p_i - t_i| / t_i`.

    >>> m = DepthAbsRel()
    >>> m.update(torch.tensor([1., 3., 4.]), torch.tensor([2., 2., 4.]), torch.ones(3, dtype=torch.bool))
    >>> round(m.compute().item(), 6)
    0.333333
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return (self.stats[1] / self.stats[3].clamp_min(1)).float()


class DepthDelta(_DepthMetric):
    r"""Fraction of valid pixels with :math:`\max(p/t, t/p) < \delta` (default 1.25).

    >>> m = DepthDelta()
    >>> m.update(torch.tensor([1., 1.2, 1.3, 2.]), torch.tensor([1., 1., 1., 1.]), torch.ones(4, dtype=torch.bool))
    >>> m.compute().item()
    0.5
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        return (self.stats[2] / self.stats[3].clamp_min(1)).float()


# --------------------------------------------------------------------------- normals

#: Histogram resolution of angular errors (degrees); medians are exact to this bin width.
ANGLE_BIN_DEG = 0.05


def angular_error_deg(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Angle in degrees between unit vectors (B, 3, H, W) at the valid pixels (B, 1, H, W)."""
    cos = (unit_vectors(pred.double(), eps=1e-12) * unit_vectors(target.double(), eps=1e-12)).sum(1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))[valid[:, 0]]


class _AngularMetric(Metric):
    """Histogram of angular errors (bins of :data:`ANGLE_BIN_DEG`) plus their exact sum."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_bins = int(round(180.0 / ANGLE_BIN_DEG))
        self.add_state("hist", torch.zeros(self.num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("angle_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        angle = angular_error_deg(pred, target, valid)
        bins = (angle / ANGLE_BIN_DEG).floor().long().clamp_(0, self.num_bins - 1)
        self.hist += torch.bincount(bins, minlength=self.num_bins).double()
        self.angle_sum += angle.sum()


class NormalsMeanAngle(_AngularMetric):
    """Mean angular error in degrees over all valid pixels.

    >>> m = NormalsMeanAngle()
    >>> t = torch.tensor([0., 0., 1.]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    >>> p = torch.stack([torch.tensor([0., 0., 1.]), torch.tensor([1., 0., 0.])], -1).view(1, 3, 1, 2)
    >>> m.update(p, t, torch.ones(1, 1, 1, 2, dtype=torch.bool))
    >>> m.compute().item()
    45.0
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return (self.angle_sum / self.hist.sum().clamp_min(1)).float()


class NormalsMedianAngle(_AngularMetric):
    """Median angular error in degrees (centre of the median histogram bin, ±0.025°)."""

    higher_is_better = False

    def compute(self) -> Tensor:
        total = self.hist.sum()
        if total == 0:
            return torch.tensor(0.0)
        idx = torch.searchsorted(self.hist.cumsum(0), total / 2)
        return ((idx.double() + 0.5) * ANGLE_BIN_DEG).float()


class NormalsWithin(_AngularMetric):
    """Fraction of valid pixels with angular error below ``threshold`` degrees.

    ``threshold`` must be a multiple of :data:`ANGLE_BIN_DEG` (11.25, 22.5 and 30 are).
    """

    higher_is_better = True

    def __init__(self, threshold: float = 11.25, **kwargs):
        super().__init__(**kwargs)
        bins = threshold / ANGLE_BIN_DEG
        if abs(bins - round(bins)) > 1e-9 or not 0 < threshold <= 180:
            raise ValueError(f"threshold must be a multiple of {ANGLE_BIN_DEG} in (0, 180], got {threshold}")
        self.threshold, self.threshold_bins = threshold, int(round(bins))

    def compute(self) -> Tensor:
        return (self.hist[: self.threshold_bins].sum() / self.hist.sum().clamp_min(1)).float()


# --------------------------------------------------------------------------- edges


def thin_edges(prob: Tensor) -> Tensor:
    """Keep pixels that are a local maximum across x or y (cheap non-maximum suppression).

    Args:
        prob: (B, 1, H, W) edge probabilities. Returns the same shape with non-maxima zeroed.
    """
    pad = F.pad(prob, (1, 1, 1, 1), value=0.0)
    c = pad[..., 1:-1, 1:-1]
    max_x = (c >= pad[..., 1:-1, :-2]) & (c >= pad[..., 1:-1, 2:])
    max_y = (c >= pad[..., :-2, 1:-1]) & (c >= pad[..., 2:, 1:-1])
    return prob * (max_x | max_y)


def _offsets_within(radius: float) -> list[tuple[int, int]]:
    """Integer offsets (dy, dx) with dy² + dx² <= radius², nearest first."""
    r = int(math.floor(radius))
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= radius * radius]
    return sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """out[..., i, j] = x[..., i + dy, j + dx] (False outside)."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def match_edges(pred: Tensor, gt: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """One-to-one matching of predicted and ground-truth edge pixels within ``radius`` pixels.

    Greedy over offsets from nearest to farthest: at each offset, an unmatched predicted pixel
    pairs with the unmatched ground-truth pixel at that offset. A translation is injective, so
    no pixel is matched twice (the correspondence is one-to-one, as in the BSDS protocol).

    Args:
        pred, gt: bool (..., H, W). Returns (matched predicted pixels, matched gt pixels), bool.
    """
    free_p, free_g = pred.clone(), gt.clone()
    for dy, dx in _offsets_within(radius):
        hit = free_p & _shift(free_g, dy, dx)
        free_p &= ~hit
        free_g &= ~_shift(hit, -dy, -dx)
    return pred & ~free_p, gt & ~free_g


class EdgeODSF(Metric):
    r"""Optimal-dataset-scale F-measure of edge maps (BSDS protocol).

    For each threshold of a fixed grid, predictions are thinned and thresholded and matched
    one-to-one to ground truth within ``max(min_pixels, tolerance * image diagonal)`` pixels.
    Matched counts are summed over the split; ODS is the best F over thresholds of
    :math:`F = 2PR/(P+R)`, :math:`P = \text{matched pred}/\text{pred}`, :math:`R = \text{matched gt}/\text{gt}`.

    Args:
        thresholds: number of equally spaced thresholds in (0, 1).
        tolerance: match distance as a fraction of the image diagonal (BSDS: 0.0075).
        min_pixels: lower bound on the match distance in pixels (small images).
        thin: apply :func:`thin_edges` to predictions first.

    ``update(prob, target, valid)`` takes probabilities (B, 1, H, W) in [0, 1].
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, thresholds: int = 20, tolerance: float = 0.0075, min_pixels: float = 1.0,
                 thin: bool = True, **kwargs):
        super().__init__(**kwargs)
        if thresholds < 1:
            raise ValueError(f"thresholds must be >= 1, got {thresholds}")
        self.tolerance, self.min_pixels, self.thin = tolerance, min_pixels, thin
        self.register_buffer("levels", torch.linspace(0, 1, thresholds + 2)[1:-1], persistent=False)
        for name in ("matched_pred", "num_pred", "matched_gt", "num_gt"):
            self.add_state(name, torch.zeros(thresholds, dtype=torch.float64), dist_reduce_fx="sum")

    def radius(self, height: int, width: int) -> float:
        return max(self.min_pixels, self.tolerance * math.hypot(height, width))

    def update(self, prob: Tensor, target: Tensor, valid: Tensor) -> None:
        if self.thin:
            prob = thin_edges(prob)
        keep = valid.any(dim=(1, 2, 3))  # edges have no invalid pixels, only absent samples
        prob, gt = prob[keep, 0], (target[keep, 0] > 0.5)
        if prob.shape[0] == 0:
            return
        r = self.radius(*prob.shape[-2:])
        pred = prob.unsqueeze(0) >= self.levels.to(prob).view(-1, 1, 1, 1)  # (T, B, H, W)
        gt = gt.unsqueeze(0).expand_as(pred)
        m_pred, m_gt = match_edges(pred, gt, r)
        self.matched_pred += m_pred.sum(dim=(1, 2, 3)).double()
        self.num_pred += pred.sum(dim=(1, 2, 3)).double()
        self.matched_gt += m_gt.sum(dim=(1, 2, 3)).double()
        self.num_gt += gt.sum(dim=(1, 2, 3)).double()

    def compute(self) -> Tensor:
        precision = self.matched_pred / self.num_pred.clamp_min(1)
        recall = self.matched_gt / self.num_gt.clamp_min(1)
        f = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        return f.max().float()


class MaskedMean(Metric):
    """Pixel-weighted mean of a per-pixel quantity (e.g. a loss) over the split.

    >>> m = MaskedMean()
    >>> m.update(torch.tensor([1., 2., 3.]), torch.tensor([True, True, False]))
    >>> m.update(torch.tensor([4.]), torch.tensor([True]))
    >>> round(m.compute().item(), 6)
    2.333333
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor, valid: Tensor) -> None:
        self.total += values[valid].double().sum()
        self.count += valid.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


# --------------------------------------------------------------------------- multitask gain


def multitask_gain(
    results: dict[str, float],
    reference: dict[str, float],
    higher_is_better: dict[str, bool],
    keys: Sequence[str] | None = None,
) -> float:
    r"""Multitask gain :math:`\Delta_m` in percent against single-task reference numbers.

    :math:`\Delta_m = \frac{100}{K}\sum_k (-1)^{l_k} (M_k - M_{\mathrm{ref},k}) / M_{\mathrm{ref},k}`,
    :math:`l_k = 1` where lower is better. ``keys`` (default: every key of ``reference``)
    name the metrics, e.g. ``"semseg/miou"``.

    >>> multitask_gain({"a": 0.55, "b": 0.9}, {"a": 0.5, "b": 1.0}, {"a": True, "b": False})
    10.0
    """
    keys = list(reference) if keys is None else list(keys)
    if not keys:
        raise ValueError("multitask_gain needs at least one reference metric")
    missing = [k for k in keys if k not in results or k not in higher_is_better]
    if missing:
        raise KeyError(f"no result or direction for metric(s) {missing}")
    total = 0.0
    for k in keys:
        sign = 1.0 if higher_is_better[k] else -1.0
        total += sign * (results[k] - reference[k]) / reference[k]
    return round(100.0 * total / len(keys), 10)
