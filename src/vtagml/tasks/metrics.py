"""Split-level dense-prediction metrics as torchmetrics ``Metric`` s (DDP-correct sums).

Every metric keeps sufficient statistics (sums and counts, or a fixed histogram) reduced with
``"sum"`` across processes and divides only in ``compute``, so a split's value does not
depend on how it was batched or sharded. Semantic segmentation uses torchmetrics' summed
confusion matrix (:class:`MeanIoU` only fixes how classes absent from the split count) and
``MulticlassAccuracy`` (see :mod:`vtagml.tasks.builtin`). Edge ODS-F follows the BSDS benchmark
(:mod:`vtagml.tasks.bsds`).

The ``update`` methods of the depth, normals and edge metrics take ``valid``: a bool mask
(B, 1, H, W) of pixels that carry a label.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from vtagml.tasks import bsds
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


def _ods_from_counts(matched_pred: Tensor, num_pred: Tensor, matched_gt: Tensor, num_gt: Tensor) -> Tensor:
    """Best F over thresholds from split-summed counts (T,), as ``edgesEvalDir``'s ``computeRPF``."""
    precision = matched_pred / num_pred.clamp_min(1e-12)
    recall = matched_gt / num_gt.clamp_min(1e-12)
    f = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return f.max().float()


class EdgeODSF(Metric):
    r"""Optimal-dataset-scale F-measure of edge maps, following the BSDS benchmark.

    Per image and threshold :math:`t` of :func:`~vtagml.tasks.bsds.bsds_thresholds`, the
    probability map is binarized (``prob >= t``), thinned with MATLAB's ``bwmorph(.., 'thin',
    inf)`` and matched one-to-one to the (unthinned) ground-truth edge pixels within
    ``max(min_pixels, max_dist * image diagonal)`` pixels (see :mod:`vtagml.tasks.bsds`). The
    four counts are summed over the split (``"sum"`` states, so DDP-correct), and
    :math:`\text{ODS} = \max_t 2 P_t R_t / (P_t + R_t)` with
    :math:`P_t = \text{matched pred}_t / \text{pred}_t`, :math:`R_t = \text{matched gt}_t / \text{gt}_t`
    (SEISM's ``fb`` / ``general_ods``, as used by the NYUD-v2 multitask evaluators; Dollár's
    ``edgesEvalDir`` also interpolates R and P between neighbouring thresholds, which can only add).

    Args:
        max_dist: match distance as a fraction of the image diagonal, a property of the dataset
            (NYUD-v2: 0.011; BSDS and PASCAL-Context: 0.0075).
        thresholds: size K of the threshold grid ``linspace(1/(K+1), 1-1/(K+1), K)``; BSDS: 99.
        approximate: evaluate only every 5th threshold of the grid (19 of 99): about 5x faster,
            never above the exact value. For validation during training only; report the exact one.
        min_pixels: lower bound on the match distance in pixels. It binds only for images with a
            diagonal under ``min_pixels / max_dist`` (133 px at 0.0075), where the benchmark
            would match exact overlaps only.
        thin: thin the binarized predictions (BSDS ``thin``; off for maps that are thin already).
        num_workers: worker processes that count the images of a batch in parallel (0: in this
            process). About 1.05 s of CPU per 480x640 image in exact mode (0.2 s approximate), so
            NYUD-v2 val (654 images) takes ~11.5 CPU-minutes: spread it over cores (and ranks,
            under DDP).

    ``update(prob, target, valid)`` takes probabilities (B, 1, H, W) in [0, 1], targets (B, 1, H, W)
    (edge where > 0.5) and ``valid`` (B, 1, H, W): samples without any valid pixel are skipped.
    The per-image work runs in NumPy/SciPy on the CPU.

    >>> gt = torch.zeros(1, 1, 4, 6); gt[0, 0, 1, 1:5] = 1  # a 4-px edge
    >>> pred = torch.zeros(1, 1, 4, 6); pred[0, 0, 2, 0:6] = 0.9  # 6 px, one row lower
    >>> m = EdgeODSF(max_dist=0.0, thin=False)  # match within min_pixels = 1 px
    >>> m.update(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    >>> round(m.compute().item(), 4)  # P = 4/6, R = 4/4
    0.8
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, max_dist: float = 0.0075, thresholds: int = 99, approximate: bool = False,
                 min_pixels: float = 1.0, thin: bool = True, num_workers: int = 0, **kwargs):
        super().__init__(**kwargs)
        if thresholds < 1:
            raise ValueError(f"thresholds must be >= 1, got {thresholds}")
        if not 0.0 <= max_dist < 1.0:
            raise ValueError(f"max_dist must be a fraction of the image diagonal in [0, 1), got {max_dist}")
        if min_pixels < 0:
            raise ValueError(f"min_pixels must be >= 0, got {min_pixels}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.max_dist, self.min_pixels, self.thin, self.approximate = max_dist, min_pixels, thin, approximate
        self.num_workers = num_workers
        levels = bsds.bsds_thresholds(thresholds)
        self.levels = levels[4::5] if approximate and thresholds >= 5 else levels
        for name in ("matched_pred", "num_pred", "matched_gt", "num_gt"):
            self.add_state(name, torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")

    def radius(self, height: int, width: int) -> float:
        """Match distance in pixels for an image of this size."""
        return max(self.min_pixels, bsds.match_radius(height, width, self.max_dist))

    def update(self, prob: Tensor, target: Tensor, valid: Tensor) -> None:
        if prob.dim() != 4 or prob.shape[1] != 1 or prob.shape != target.shape:
            raise ValueError(f"prob and target must be (B, 1, H, W) of one shape, got {tuple(prob.shape)} "
                             f"and {tuple(target.shape)}")
        keep = valid.reshape(valid.shape[0], -1).any(dim=1)  # edges have no invalid pixels, only absent samples
        probs = prob[keep, 0].detach().double().cpu().numpy()
        gts = (target[keep, 0] > 0.5).cpu().numpy()
        if probs.shape[0] == 0:
            return
        counts = bsds.edge_counts_many(probs, gts, self.levels, self.radius(*probs.shape[-2:]), self.thin,
                                       self.num_workers)
        counts = torch.as_tensor(counts, dtype=torch.float64, device=self.matched_pred.device)
        self.matched_pred += counts[0]
        self.num_pred += counts[1]
        self.matched_gt += counts[2]
        self.num_gt += counts[3]

    def compute(self) -> Tensor:
        return _ods_from_counts(self.matched_pred, self.num_pred, self.matched_gt, self.num_gt)


# --------------------------------------------------------------------------- semantic segmentation


class MeanIoU(MulticlassJaccardIndex):
    r"""Mean intersection over union from the split's summed confusion matrix.

    :math:`\text{IoU}_c = TP_c / (TP_c + FP_c + FN_c)` over valid pixels (target ``!= ignore_index``).
    A class with no pixel in the ground truth or the prediction over the whole split has
    :math:`TP + FP + FN = 0`; ``absent`` says what happens to it:

    - ``"drop"`` (default): left out of the mean. It carries no evidence either way, and a split
      that happens to miss a class is not penalized. This is torchmetrics'
      ``MulticlassJaccardIndex(average="macro")`` (1.3 to 1.9 at least), pinned here by our own
      reduction so that a torchmetrics change cannot move it.
    - ``"zero"``: counted as IoU 0 in a mean over all classes, the reference multitask evaluators'
      convention (MTI-Net / ATRC / InvPT ``eval_semseg``: ``tp / max(tp + fp + fn, 1e-8)``,
      averaged over every class).

    Both agree whenever every class occurs in the split (full NYUD-v2 or PASCAL-Context val).

    >>> m = MeanIoU(num_classes=3, absent="drop")  # class 2 never occurs
    >>> m.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    >>> round(m.compute().item(), 6)  # (1/2 + 2/3) / 2
    0.583333
    >>> z = MeanIoU(num_classes=3, absent="zero")
    >>> z.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    >>> round(z.compute().item(), 6)  # (1/2 + 2/3 + 0) / 3
    0.388889
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None, absent: str = "drop", **kwargs):
        if absent not in ("drop", "zero"):
            raise ValueError(f"absent must be 'drop' or 'zero', got {absent!r}")
        kwargs.setdefault("validate_args", False)
        super().__init__(num_classes=num_classes, average="macro", ignore_index=ignore_index, **kwargs)
        self.absent = absent

    def compute(self) -> Tensor:
        cm = self.confmat.double()
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = tp / union.clamp_min(1)
        if self.absent == "drop":
            iou = iou[union > 0]
        return iou.mean().float() if iou.numel() else torch.tensor(0.0)


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
    results: Mapping[str, float],
    reference: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    primary: Mapping[str, str] | None = None,
) -> float:
    r"""Multitask gain :math:`\Delta_m` in percent over tasks, one primary metric each.

    :math:`\Delta_m = \frac{100}{T}\sum_t (-1)^{l_t} (M_t - M_{\mathrm{STL},t}) / M_{\mathrm{STL},t}`,
    :math:`l_t = 1` where lower is better, as the reference multitask evaluators average: a task
    counts once however many metrics it logs.

    Args:
        results: this model's metrics ``{"task/metric": value}`` (e.g. ``"semseg/miou"``).
        reference: single-task results, same keys; only the primary ones are read.
        higher_is_better: direction of each metric key (from the metric's ``higher_is_better``).
        primary: task name -> its primary metric name (each :class:`~vtagml.tasks.base.Task`'s
            ``primary_metric``; :func:`~vtagml.tasks.base.primary_metrics` builds it). Default:
            the tasks of ``reference``, which must then hold exactly one metric per task.

    >>> multitask_gain({"semseg/miou": 0.55, "semseg/pixel_acc": 0.1, "depth/rmse": 0.9},
    ...                {"semseg/miou": 0.5, "semseg/pixel_acc": 0.9, "depth/rmse": 1.0},
    ...                {"semseg/miou": True, "depth/rmse": False}, {"semseg": "miou", "depth": "rmse"})
    10.0
    """
    if primary is None:
        per_task: dict[str, list[str]] = {}
        for key in reference:
            task, _, metric = key.partition("/")
            per_task.setdefault(task, []).append(metric)
        several = {t: m for t, m in per_task.items() if len(m) > 1}
        if several:
            raise ValueError(f"reference holds several metrics for task(s) {several}: pass primary= "
                             "(each task's primary_metric) so that every task counts once")
        primary = {t: m[0] for t, m in per_task.items()}
    if not primary:
        raise ValueError("multitask_gain needs at least one task in primary (or in reference)")
    keys = [f"{task}/{metric}" for task, metric in primary.items()]
    for name, table in (("results", results), ("reference", reference), ("higher_is_better", higher_is_better)):
        missing = [k for k in keys if k not in table]
        if missing:
            raise KeyError(f"{name} has no value for primary metric(s) {missing}")
    zero = [k for k in keys if reference[k] == 0]
    if zero:
        raise ValueError(f"reference value of {zero} is 0: the relative gain is undefined")
    total = sum((1.0 if higher_is_better[k] else -1.0) * (results[k] - reference[k]) / reference[k] for k in keys)
    return round(100.0 * total / len(keys), 10)
