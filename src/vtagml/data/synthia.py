"""SYNTHIA RAND-CITYSCAPES: ``RGB/<id>.png``, ``GT/LABELS/<id>.png``, ``Depth/Depth/<id>.png``."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch

from vtagml.data.base import FileMultitaskDataset, Record, as_label
from vtagml.data.cityscapes import train_id_table
from vtagml.data.class_maps import SYNTHIA_TO_CITYSCAPES, cityscapes_classes
from vtagml.data.io import read_png

#: SYNTHIA depth units per metre (centimetres; *verify* against the release).
SYNTHIA_DEPTH_UNITS_PER_METRE = 100.0


class Synthia(FileMultitaskDataset):
    """SYNTHIA RAND-CITYSCAPES, the usual source domain for adaptation to Cityscapes.

    ``semseg``: class id in the first channel of ``GT/LABELS`` (16-bit colour PNG) mapped to
    Cityscapes train ids (the 16 shared classes; others 255). ``depth``: ``Depth/Depth`` in
    centimetres -> metres (0 invalid). SYNTHIA has no official split: ``train`` is every id
    except each ``holdout``-th, which form ``val`` (``all`` keeps everything).

    Args:
        root: the RAND_CITYSCAPES folder.
        split: ``train``, ``val`` or ``all``.
        tasks: subset of ``semseg, depth``.
        num_classes: 16 (shared classes, compact ids) or 19 (Cityscapes train ids).
        holdout: every ``holdout``-th sample (sorted by id) is in ``val``.
        transform: joint transform of the sample dict.
    """

    available_tasks = ("semseg", "depth")

    def __init__(self, root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 num_classes: int = 16, holdout: int = 10, transform: Callable[[dict], dict] | None = None):
        if split not in ("train", "val", "all"):
            raise ValueError(f"Synthia split must be train, val or all, got {split!r}")
        self.classes = cityscapes_classes(num_classes)
        self._table = train_id_table(num_classes, SYNTHIA_TO_CITYSCAPES)
        self.holdout = holdout
        super().__init__(root, split, tasks, transform)

    def list_records(self) -> list[Record]:
        rgb = self.root / "RGB"
        if not rgb.is_dir():
            raise FileNotFoundError(f"SYNTHIA RGB folder not found: {rgb}")
        files = sorted(rgb.glob("*.png"))
        if self.split != "all":
            keep_val = self.split == "val"
            files = [f for i, f in enumerate(files) if (i % self.holdout == self.holdout - 1) == keep_val]
        return [Record(f.stem, f, {"semseg": (self.root / "GT" / "LABELS" / f.name,),
                                   "depth": (self.root / "Depth" / "Depth" / f.name,)}) for f in files]

    def decode_semseg(self, path):
        v = read_png(path)
        ids = (v[..., 0] if v.ndim == 3 else v).astype(np.int64)
        return torch.from_numpy(self._table[ids].astype(np.int64))

    def decode_depth(self, path):
        v = read_png(path)
        v = v[..., 0] if v.ndim == 3 else v
        return as_label(v.astype(np.float32) / SYNTHIA_DEPTH_UNITS_PER_METRE)
