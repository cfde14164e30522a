"""Taskonomy: ``<task_folder>/<building>/point_<p>_view_<v>_domain_<domain>.png``.

Buildings lack some modalities: a missing file leaves that task out of the sample.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Callable, Sequence

import numpy as np
import torch

from vtagml.data.base import FileMultitaskDataset, Record, as_label, unit_normals
from vtagml.data.class_maps import IGNORE, TASKONOMY_CLASSES
from vtagml.data.io import read_png

#: Library task -> (folder, file domain).
TASKONOMY_FOLDERS: dict[str, tuple[str, str]] = {
    "depth": ("depth_euclidean", "depth_euclidean"),
    "depth_zbuffer": ("depth_zbuffer", "depth_zbuffer"),
    "normals": ("normal", "normal"),
    "edges": ("edge_texture", "edge_texture"),
    "edges_occlusion": ("edge_occlusion", "edge_occlusion"),
    "semseg": ("segment_semantic", "segmentsemantic"),
    "reshading": ("reshading", "reshading"),
}
DEPTH_UNITS_PER_METRE = 512.0
DEPTH_INVALID = 65535
_NAME = re.compile(r"^point_(\d+)_view_(\d+)_domain_rgb\.png$")


def read_buildings(split_csv: str | os.PathLike, split: str) -> list[str]:
    """Buildings of ``split`` from a csv with a building column first and a 0/1 column per split."""
    with open(split_csv, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"split csv {split_csv} is empty")
    header = [h.strip().lower() for h in rows[0]]
    if split not in header:
        raise ValueError(f"split csv {split_csv} has no column {split!r}; columns: {header}")
    col = header.index(split)
    return [r[0].strip() for r in rows[1:] if len(r) > col and r[col].strip() in ("1", "1.0", "true", "True")]


class Taskonomy(FileMultitaskDataset):
    """Taskonomy with library task names and units.

    - ``depth`` / ``depth_zbuffer``: uint16 / 512 -> metres; 65535 -> 0 (invalid);
    - ``normals``: RGB ``2 v / 255 - 1`` -> unit vectors; invalid where the depth is invalid;
    - ``edges`` / ``edges_occlusion``: uint16 / 65535 in [0, 1] (soft);
    - ``semseg``: 0 -> 255 (uncertain), 1..17 -> 0..16 (background + 16 COCO classes);
    - ``reshading``: uint8 / 255.

    Args:
        root: folder holding the task folders (``rgb``, ``depth_euclidean``, ...).
        split: a split name (for ``split_csv``) or any label when ``buildings`` is given.
        buildings: buildings to use (default: from ``split_csv``, else every building of ``rgb``).
        split_csv: csv with one building per row and a 0/1 column per split.
        tasks: library task names (default: all of them).
        transform: joint transform of the sample dict.
    """

    available_tasks = tuple(TASKONOMY_FOLDERS)
    classes = TASKONOMY_CLASSES
    missing_labels_ok = True
    max_depth = 128.0  # the 16-bit encoding's range

    def __init__(self, root: str | os.PathLike, split: str = "train", buildings: Sequence[str] | None = None,
                 split_csv: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
                 transform: Callable[[dict], dict] | None = None):
        self._buildings, self._split_csv = buildings, split_csv
        super().__init__(root, split, tasks, transform)

    def list_records(self) -> list[Record]:
        rgb = self.root / "rgb"
        if not rgb.is_dir():
            raise FileNotFoundError(f"Taskonomy rgb folder not found: {rgb}")
        if self._buildings is not None:
            buildings = list(self._buildings)
        elif self._split_csv is not None:
            buildings = read_buildings(self._split_csv, self.split)
        else:
            buildings = sorted(p.name for p in rgb.iterdir() if p.is_dir())
        records = []
        for b in buildings:
            folder = rgb / b
            if not folder.is_dir():
                raise FileNotFoundError(f"Taskonomy building {b!r} has no rgb folder: {folder}")
            for f in sorted(folder.iterdir()):
                m = _NAME.match(f.name)
                if not m:
                    continue
                stem = f"point_{m.group(1)}_view_{m.group(2)}_domain_"
                labels = {t: (self.root / d / b / f"{stem}{dom}.png",) for t, (d, dom) in TASKONOMY_FOLDERS.items()}
                records.append(Record(f"{b}/{f.stem}", f, labels))
        return records

    @staticmethod
    def decode_depth(path):
        v = read_png(path)
        if v.dtype != np.uint16 or v.ndim != 2:
            raise ValueError(f"{path}: Taskonomy depth must be single-channel 16-bit, got {v.dtype} {v.shape}")
        return as_label(np.where(v == DEPTH_INVALID, 0.0, v.astype(np.float32) / DEPTH_UNITS_PER_METRE))

    decode_depth_zbuffer = decode_depth  # the same 16-bit encoding

    def decode_normals(self, path):
        """Unit normals; invalid where the sample's depth_euclidean is invalid (if that file exists)."""
        v = read_png(path)
        if v.ndim != 3 or v.shape[-1] < 3:
            raise ValueError(f"{path}: Taskonomy normals must be RGB, got shape {v.shape}")
        n = unit_normals(as_label(2.0 * v[..., :3].astype(np.float32) / 255.0 - 1.0))
        folder, domain = TASKONOMY_FOLDERS["depth"]
        depth_path = path.parents[2] / folder / path.parent.name / path.name.replace("domain_normal", f"domain_{domain}")
        if depth_path.is_file():
            valid = self.decode_depth(depth_path) > 0
            n = torch.where(valid, n, torch.zeros_like(n))
        return n

    @staticmethod
    def decode_edges(path):
        v = read_png(path)
        if v.ndim != 2:
            raise ValueError(f"{path}: Taskonomy edges must be single-channel, got shape {v.shape}")
        scale = 65535.0 if v.dtype == np.uint16 else 255.0
        return as_label(np.clip(v.astype(np.float32) / scale, 0.0, 1.0))

    decode_edges_occlusion = decode_edges  # the same encoding

    def decode_semseg(self, path):
        v = read_png(path)
        v = (v[..., 0] if v.ndim == 3 else v).astype(np.int64)
        if v.max(initial=0) > len(TASKONOMY_CLASSES):
            bad = np.unique(v[v > len(TASKONOMY_CLASSES)])[:10].tolist()
            raise ValueError(f"{path}: value(s) {bad} outside 0 (uncertain) and 1..{len(TASKONOMY_CLASSES)}")
        return torch.from_numpy(np.where(v == 0, IGNORE, v - 1))

    def decode_reshading(self, path):
        v = read_png(path)
        v = v[..., 0] if v.ndim == 3 else v
        return as_label(v.astype(np.float32) / (65535.0 if v.dtype == np.uint16 else 255.0))

