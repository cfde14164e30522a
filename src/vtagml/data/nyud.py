"""NYUD-v2 in the multitask layout (``NYUD_MT``) of MTI-Net / ATRC / InvPT::

    images/<id>.jpg  segmentation/<id>.png  depth/<id>.npy  normals/<id>.npy  edge/<id>.npy
    gt_sets/train.txt  gt_sets/val.txt
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from vtagml.data.base import FileMultitaskDataset, Record, as_label, unit_normals
from vtagml.data.class_maps import IGNORE, NYUD_CLASSES
from vtagml.data.io import read_npy, read_png

#: Sign of each normal axis in the published files relative to the library's camera frame
#: (x right, y down, z forward). Published files: x right, y down, z away (*verify* on a floor).
NYUD_NORMAL_SIGNS = (1.0, 1.0, 1.0)


class NYUDv2(FileMultitaskDataset):
    """NYUD-v2: 40 classes (file value - 1; 0 = unlabeled -> 255), depth in metres (0 invalid),
    normals to unit vectors (zero = invalid), binary edges.

    Args:
        root: the ``NYUD_MT`` folder.
        split: ``train`` or ``val`` (any ``gt_sets/<split>.txt``).
        tasks: subset of ``semseg, depth, normals, edges`` (default: all).
        transform: joint transform of the sample dict.
        class_map: a declared map of :mod:`vtagml.data.class_maps` (e.g. ``"nyudv2->taskonomy"``):
            semseg labels in its target label space (to test a model of that space).
    """

    available_tasks = ("semseg", "depth", "normals", "edges")
    classes = NYUD_CLASSES
    max_depth = 20.0  # Kinect depth: metres, at most ~10
    edge_max_dist = 0.011  # the NYUD-v2 edge evaluators' maxDist (BSDS / PASCAL: 0.0075)
    _files = {"semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"), "normals": ("normals", ".npy"),
              "edges": ("edge", ".npy")}

    def __init__(self, root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 transform: Callable[[dict], dict] | None = None, class_map: str | None = None):
        super().__init__(root, split, tasks, transform, class_map)

    def list_records(self) -> list[Record]:
        split_file = self.root / "gt_sets" / f"{self.split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"NYUDv2 split file not found: {split_file}")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        return [Record(i, self.root / "images" / f"{i}.jpg",
                       {t: (self.root / d / f"{i}{ext}",) for t, (d, ext) in self._files.items()}) for i in ids]

    def decode_semseg(self, path):
        v = read_png(path)
        if v.ndim != 2:
            raise ValueError(f"{path}: expected a single-channel class map, got shape {v.shape}")
        v = v.astype(np.int64)
        if v.max(initial=0) > len(NYUD_CLASSES):
            bad = np.unique(v[v > len(NYUD_CLASSES)])[:10].tolist()
            raise ValueError(f"{path}: value(s) {bad} outside 0 (unlabeled) and 1..{len(NYUD_CLASSES)} (classes)")
        return torch.from_numpy(np.where(v == 0, IGNORE, v - 1))

    def decode_depth(self, path):
        return as_label(read_npy(path).astype(np.float32))

    def decode_normals(self, path):
        n = read_npy(path).astype(np.float32)
        if n.ndim != 3 or n.shape[-1] != 3:
            raise ValueError(f"{path}: expected H x W x 3 normals, got shape {n.shape}")
        return unit_normals(as_label(n * np.array(NYUD_NORMAL_SIGNS, dtype=np.float32)))

    def decode_edges(self, path):
        return as_label((read_npy(path) > 0.5).astype(np.float32))
