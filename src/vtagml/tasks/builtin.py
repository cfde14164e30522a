"""The built-in tasks: semantic segmentation, depth, surface normals, edges, intensity maps."""

from __future__ import annotations

import functools
import math

import matplotlib
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from vtagml.tasks import losses
from vtagml.tasks.base import Task, register_task
from vtagml.tasks.metrics import (
    DepthAbsRel,
    DepthDelta,
    DepthRMSE,
    EdgeODSF,
    MaskedMean,
    MeanIoU,
    NormalsMeanAngle,
    NormalsMedianAngle,
    NormalsWithin,
)

IGNORE_INDEX = 255


@functools.lru_cache(maxsize=8)
def class_palette(num_classes: int) -> np.ndarray:
    """A fixed RGB palette (num_classes, 3) uint8: tab20 colours, then evenly spaced hues."""
    cmap = matplotlib.colormaps["tab20"] if num_classes <= 20 else matplotlib.colormaps["hsv"]
    idx = np.arange(num_classes) if num_classes <= 20 else np.linspace(0, 1, num_classes, endpoint=False)
    return (np.asarray(cmap(idx))[:, :3] * 255).round().astype(np.uint8)


class SemanticSegmentation(Task):
    """Per-pixel classes. Target long (B, H, W), ``ignore_index`` = unlabeled; logits out.

    Metrics: ``miou`` (:class:`~vtagml.tasks.metrics.MeanIoU`) and micro pixel accuracy.
    ``absent_classes`` chooses what mIoU does with a class that occurs neither in the ground truth
    nor in the prediction of the whole split: ``"drop"`` (default) leaves it out of the mean,
    ``"zero"`` counts it as IoU 0 like the reference multitask evaluators (MTI-Net / ATRC / InvPT
    ``eval_semseg``). The two agree when every class occurs, as on full NYUD-v2 val.
    ``class_weights`` (one value >= 0 per class) weight the cross-entropy per target class (a
    weighted mean: rare classes count more in the loss, as mIoU counts every class alike).
    ``jaccard_weight`` > 0 adds that multiple of the soft Jaccard loss
    (:func:`~vtagml.tasks.losses.soft_jaccard`, over the batch's classes) to the cross-entropy: a
    surrogate of the IoU that mIoU averages, which weighs every class alike whatever its size.
    """

    kind = "classes"
    primary_metric = "miou"

    def __init__(self, num_classes: int, name: str = "semseg", weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX, class_names: list[str] | None = None,
                 absent_classes: str = "drop", class_weights: list[float] | None = None,
                 jaccard_weight: float = 0.0):
        if num_classes < 2:
            raise ValueError(f"task {name!r}: num_classes must be >= 2, got {num_classes}")
        if absent_classes not in ("drop", "zero"):
            raise ValueError(f"task {name!r}: absent_classes must be 'drop' or 'zero', got {absent_classes!r}")
        if class_weights is not None and (len(class_weights) != num_classes or min(class_weights) < 0
                                          or sum(class_weights) <= 0):
            raise ValueError(f"task {name!r}: class_weights must be {num_classes} values >= 0 with a positive sum, "
                             f"got {class_weights}")
        if not (math.isfinite(jaccard_weight) and jaccard_weight >= 0):
            raise ValueError(f"task {name!r}: jaccard_weight must be a finite value >= 0, got {jaccard_weight}")
        super().__init__(name, num_classes, weight)
        self.num_classes, self.ignore_index, self.absent_classes = num_classes, ignore_index, absent_classes
        self.jaccard_weight = float(jaccard_weight)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self._weights_on: dict[torch.device, Tensor] = {}  # copied to a device once, not at every step
        self.loss_fn = functools.partial(losses.cross_entropy, ignore_index=ignore_index)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]

    def valid_mask(self, target: Tensor) -> Tensor:
        return (target != self.ignore_index).unsqueeze(1)

    def loss(self, pred: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
        valid = self.masked_valid(target, present)
        weights = None
        if self.class_weights is not None:
            if pred.device not in self._weights_on:
                self._weights_on[pred.device] = torch.tensor(self.class_weights, device=pred.device)
            weights = self._weights_on[pred.device]
        loss = self.loss_fn(pred, target, valid, class_weights=weights)
        if self.jaccard_weight:
            loss = loss + self.jaccard_weight * losses.soft_jaccard(pred, target, valid, self.ignore_index)
        return loss

    def to_label(self, pred: Tensor) -> Tensor:
        return pred.argmax(dim=1)

    def build_metrics(self, approximate: bool = False) -> nn.ModuleDict:
        kw = dict(num_classes=self.num_classes, ignore_index=self.ignore_index, validate_args=False)
        return nn.ModuleDict({"miou": MeanIoU(absent=self.absent_classes, **kw),
                              "pixel_acc": MulticlassAccuracy(average="micro", **kw)})

    def update_metrics(self, metrics, pred, target, present=None):
        target = torch.where(self.masked_valid(target, present)[:, 0], target,
                             torch.full_like(target, self.ignore_index))
        labels = pred.argmax(dim=1)
        for metric in metrics.values():
            metric.update(labels, target)

    def colorize(self, label: Tensor) -> np.ndarray:
        lab = label.detach().long().cpu().numpy()
        out = np.zeros((*lab.shape, 3), dtype=np.uint8)
        known = lab < self.num_classes
        out[known] = class_palette(self.num_classes)[lab[known]]
        return out


class ClassMapped(SemanticSegmentation):
    """Semantic segmentation of a head trained on a declared map's source classes, predicting in its
    target classes (:func:`vtagml.data.class_maps.class_map`), to test a model on another dataset.

    A target class's logit is the largest logit of its source classes (so the argmax is the map of
    the source argmax among mapped classes); a target class without a source is never predicted.
    """

    def __init__(self, class_map: str, name: str = "semseg", weight: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 absent_classes: str = "drop"):
        from vtagml.data.class_maps import class_map as declared_class_map
        source, target, table = declared_class_map(class_map)
        super().__init__(len(target), name, weight, ignore_index, list(target), absent_classes)
        self.class_map, self.channels = class_map, len(source)  # the head predicts the source classes
        targets = torch.from_numpy(table[: len(source)].astype(np.int64))
        mapped = targets != IGNORE_INDEX  # resolved once here: no boolean indexing (a host sync) per forward
        self.mapped_sources, self.mapped_targets = mapped.nonzero()[:, 0], targets[mapped]

    def postprocess(self, raw: Tensor) -> Tensor:
        b, _, h, w = raw.shape
        index = self.mapped_targets.to(raw.device).view(1, -1, 1, 1).expand(b, -1, h, w)
        out = raw.new_full((b, self.num_classes, h, w), -1e4)
        return out.scatter_reduce(1, index, raw.index_select(1, self.mapped_sources.to(raw.device)),
                                  reduce="amax", include_self=False)


class Depth(Task):
    """Metric depth (B, 1, H, W) in metres, 0 = invalid.

    Predictions are ``exp(raw)``, starting at ``typical_depth`` (the head's bias), so training
    moves in log space (ratios, as the delta metrics measure) from the right scale.
    """

    kind = "depth"
    primary_metric = "rmse"

    def __init__(self, name: str = "depth", weight: float = 1.0, loss: str = "l1", typical_depth: float = 3.0):
        super().__init__(name, 1, weight)
        if typical_depth <= 0:
            raise ValueError(f"task {name!r}: typical_depth must be > 0, got {typical_depth}")
        self.typical_depth = typical_depth
        self.loss_fn = self._pick_loss(loss, {"l1": losses.l1, "log_l1": losses.log_l1, "silog": losses.silog,
                                                "berhu": losses.berhu})

    def init_head(self, conv: nn.Conv2d) -> None:
        nn.init.constant_(conv.bias, math.log(self.typical_depth))

    def postprocess(self, raw: Tensor) -> Tensor:
        return torch.exp(raw.clamp(max=12.0))  # at most 1.6e5 m

    def valid_mask(self, target: Tensor) -> Tensor:
        return target > 0

    def build_metrics(self, approximate: bool = False) -> nn.ModuleDict:
        return nn.ModuleDict({"rmse": DepthRMSE(), "absrel": DepthAbsRel(), "delta1": DepthDelta(1.25)})

    def colorize(self, label: Tensor) -> np.ndarray:
        d = label.detach().float().cpu()[0].numpy()
        valid = d > 0
        lo, hi = (np.percentile(d[valid], [2, 98]) if valid.any() else (0.0, 1.0))
        x = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = (matplotlib.colormaps["magma_r"](x)[..., :3] * 255).round().astype(np.uint8)
        rgb[~valid] = 0
        return rgb


class SurfaceNormals(Task):
    """Unit normals (B, 3, H, W) in the camera frame; the zero vector = invalid."""

    kind = "normals"
    primary_metric = "mean_angle"

    def __init__(self, name: str = "normals", weight: float = 1.0, loss: str = "cosine"):
        super().__init__(name, 3, weight)
        self.loss_fn = self._pick_loss(loss, {"cosine": losses.cosine, "l1": losses.l1})

    def postprocess(self, raw: Tensor) -> Tensor:
        return losses.unit_vectors(raw, dim=1, eps=1e-6)

    def valid_mask(self, target: Tensor) -> Tensor:
        return (target.abs().sum(dim=1, keepdim=True) > 1e-6)

    def build_metrics(self, approximate: bool = False) -> nn.ModuleDict:
        return nn.ModuleDict({"mean_angle": NormalsMeanAngle(), "median_angle": NormalsMedianAngle(),
                              "within_11_25": NormalsWithin(11.25), "within_22_5": NormalsWithin(22.5),
                              "within_30": NormalsWithin(30.0)})

    def hflip(self, label: Tensor) -> Tensor:
        out = label.flip(-1).clone()
        out[0] = -out[0]  # x points right: a mirror negates it
        return out

    def colorize(self, label: Tensor) -> np.ndarray:
        n = label.detach().float().cpu().numpy().transpose(1, 2, 0)
        return ((n + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)


class Edges(Task):
    """Binary edge maps (B, 1, H, W) in [0, 1]; logits out; class-balanced BCE; BSDS ODS-F metric.

    Args:
        pos_weight: weight of edge pixels in the balanced BCE (non-edges: ``1 - pos_weight``).
        max_dist: ODS-F match distance as a fraction of the image diagonal, a property of the
            dataset (``edge_max_dist`` of the dataset classes: NYUD-v2 0.011, BSDS / PASCAL 0.0075).
        min_pixels: floor of the match distance in pixels (binds only on small images).
        thresholds: size of the ODS-F threshold grid (BSDS: 99).
        metric_workers: worker processes counting ODS-F images in parallel (0: in-process); see
            :class:`~vtagml.tasks.metrics.EdgeODSF`.
    """

    kind = "edges"
    primary_metric = "odsf"

    def __init__(self, name: str = "edges", weight: float = 1.0, pos_weight: float = 0.95,
                 max_dist: float = 0.0075, min_pixels: float = 1.0, thresholds: int = 99, metric_workers: int = 0):
        super().__init__(name, 1, weight)
        if not 0.0 < pos_weight < 1.0:
            raise ValueError(f"task {name!r}: pos_weight must be in (0, 1), got {pos_weight}")
        if not 0.0 <= max_dist < 1.0:
            raise ValueError(f"task {name!r}: max_dist must be a fraction of the image diagonal in [0, 1), "
                             f"got {max_dist}")
        self.pos_weight, self.max_dist, self.min_pixels, self.thresholds = pos_weight, max_dist, min_pixels, thresholds
        self.metric_workers = metric_workers
        self.loss_fn = functools.partial(losses.balanced_bce, pos_weight=pos_weight)

    def to_label(self, pred: Tensor) -> Tensor:
        return torch.sigmoid(pred)

    def build_metrics(self, approximate: bool = False) -> nn.ModuleDict:
        odsf = EdgeODSF(max_dist=self.max_dist, thresholds=self.thresholds, approximate=approximate,
                        min_pixels=self.min_pixels, num_workers=self.metric_workers)
        return nn.ModuleDict({"odsf": odsf, "loss": MaskedMean()})

    def update_metrics(self, metrics, pred, target, present=None):
        valid = self.masked_valid(target, present)
        metrics["odsf"].update(torch.sigmoid(pred.float()), target, valid)
        metrics["loss"].update(losses.balanced_bce_map(pred, target, self.pos_weight), valid)


class Intensity(Task):
    """A per-pixel scalar in [0, 1] (e.g. reshading); sigmoid output, L1 loss, MAE metric."""

    kind = "intensity"
    primary_metric = "mae"

    def __init__(self, name: str = "reshading", weight: float = 1.0):
        super().__init__(name, 1, weight)
        self.loss_fn = losses.l1

    def postprocess(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw)

    def build_metrics(self, approximate: bool = False) -> nn.ModuleDict:
        return nn.ModuleDict({"mae": MaskedMean()})

    def update_metrics(self, metrics, pred, target, present=None):
        metrics["mae"].update((pred.float() - target.float()).abs(), self.masked_valid(target, present))


def _semseg_factory(**kw) -> Task:
    return SemanticSegmentation(name="semseg", **kw)


_semseg_factory.needs_num_classes = True
register_task("semseg", _semseg_factory)
register_task("depth", lambda **kw: Depth(name="depth", **kw))
register_task("depth_zbuffer", lambda **kw: Depth(name="depth_zbuffer", **kw))
register_task("normals", lambda **kw: SurfaceNormals(name="normals", **kw))
register_task("edges", lambda **kw: Edges(name="edges", **kw))
register_task("edges_occlusion", lambda **kw: Edges(name="edges_occlusion", **kw))
register_task("reshading", lambda **kw: Intensity(name="reshading", **kw))
