"""Cityscapes: ``leftImg8bit``, ``gtFine``, ``disparity``, ``camera``.

Yields Cityscapes train ids (19 classes, or the 16 shared with SYNTHIA with ``num_classes=16``)
and depth in metres, like :mod:`vtagml.data.synthia`, so a model trained on one is tested on the other.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from vtagml.data.base import FileMultitaskDataset, Record, as_label
from vtagml.data.class_maps import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN,
    cityscapes_classes,
    lookup_table,
)
from vtagml.data.io import read_json, read_png

def train_id_table(num_classes: int, source: dict[int, str]) -> np.ndarray:
    """Source id -> index in the 19- or 16-class Cityscapes space (255 elsewhere)."""
    names = cityscapes_classes(num_classes)
    return lookup_table({src: names.index(name) for src, name in source.items() if name in names})


class Cityscapes(FileMultitaskDataset):
    """Cityscapes: ``semseg`` from ``gtFine_labelIds`` (official labelId -> trainId table, others 255),
    ``depth`` = baseline * fx / disparity with disparity = (v - 1) / 256 for v > 1 (else invalid).

    Args:
        root: folder holding ``leftImg8bit``, ``gtFine``, ``disparity``, ``camera``.
        split: ``train``, ``val`` or ``test`` (test labels are withheld by the benchmark).
        tasks: subset of ``semseg, depth``.
        num_classes: 19 (all train ids) or 16 (those shared with SYNTHIA).
        transform: joint transform of the sample dict.
    """

    available_tasks = ("semseg", "depth")

    def __init__(self, root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 num_classes: int = 19, transform: Callable[[dict], dict] | None = None):
        self.classes = cityscapes_classes(num_classes)
        names = {i: CITYSCAPES_CLASSES[t] for i, t in CITYSCAPES_LABEL_TO_TRAIN.items()}
        self._table = train_id_table(num_classes, names)
        super().__init__(root, split, tasks, transform)

    def list_records(self) -> list[Record]:
        images = self.root / "leftImg8bit" / self.split
        if not images.is_dir():
            raise FileNotFoundError(f"Cityscapes images not found: {images}")
        records = []
        for f in sorted(images.glob("*/*_leftImg8bit.png")):
            city, stem = f.parent.name, f.name[: -len("_leftImg8bit.png")]
            sub = lambda kind, suffix: self.root / kind / self.split / city / f"{stem}_{suffix}"  # noqa: E731
            records.append(Record(stem, f, {"semseg": (sub("gtFine", "gtFine_labelIds.png"),),
                                            "depth": (sub("disparity", "disparity.png"),
                                                      sub("camera", "camera.json"))}))
        return records

    def decode_semseg(self, path):
        v = read_png(path)
        if v.ndim != 2:
            raise ValueError(f"{path}: expected a single-channel labelIds map, got shape {v.shape}")
        bad = (v > 33) & (v != 255)  # label ids 0..33; -1 (license plate) is stored as 255
        if bad.any():
            raise ValueError(f"{path}: value(s) {np.unique(v[bad])[:10].tolist()} are not Cityscapes label ids "
                             f"(0..33, 255)")
        return torch.from_numpy(self._table[v.astype(np.int64)].astype(np.int64))

    def decode_depth(self, disparity_path, camera_path):
        v = read_png(disparity_path).astype(np.float64)
        cam = read_json(camera_path)
        try:
            baseline, fx = float(cam["extrinsic"]["baseline"]), float(cam["intrinsic"]["fx"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{camera_path}: needs extrinsic.baseline and intrinsic.fx ({err})") from err
        disparity = np.where(v > 0, (v - 1.0) / 256.0, 0.0)
        depth = np.where(disparity > 0, baseline * fx / np.maximum(disparity, 1e-12), 0.0)
        return as_label(depth.astype(np.float32))
