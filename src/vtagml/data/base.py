"""The contract shared by real datasets: one record per sample, decoded on access.

A subclass lists its samples as :class:`Record` s (an image path and one path per task) and
decodes each task's file in ``decode_<task>`` methods, in the library's conventions (see
:mod:`vtagml.data.synthetic`). The base class checks tasks, file presence and sizes, so every
error names the file or task at fault. Datasets whose samples may lack a modality
(``missing_labels_ok``) leave that task's key out of the sample; losses then skip it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vtagml.data.check import validate_label
from vtagml.data.class_maps import class_map as declared_class_map
from vtagml.data.io import read_rgb


@dataclass
class Record:
    """One sample: its id, image file and label files (a task may need several files)."""

    id: str
    image: Path
    labels: dict[str, tuple[Path, ...]] = field(default_factory=dict)


class FileMultitaskDataset(Dataset):
    """Base of the real datasets; subclasses set ``available_tasks``, ``classes`` and decoders."""

    available_tasks: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    missing_labels_ok: bool = False
    #: largest plausible depth in metres (None: no bound); larger values mean a unit error
    max_depth: float | None = None
    #: edge ODS-F match distance as a fraction of the image diagonal (BSDS ``maxDist``; the
    #: BSDS / PASCAL-Context value), passed to the edge tasks as ``Edges(max_dist=...)``
    edge_max_dist: float = 0.0075

    def __init__(self, root: str | os.PathLike, split: str, tasks: Sequence[str] | None,
                 transform: Callable[[dict], dict] | None = None, class_map: str | None = None):
        self.root = Path(root)
        self._class_table = None
        if class_map is not None:  # semseg labels in another label space (a declared map)
            source, self.classes, table = declared_class_map(class_map)
            if source != type(self).classes:
                raise ValueError(f"class map {class_map!r} maps {len(source)} classes ({source[0]}, ...), not "
                                 f"{type(self).__name__}'s {len(type(self).classes)}")
            self._class_table = torch.from_numpy(table.astype("int64"))
        if not self.root.is_dir():
            raise FileNotFoundError(f"{type(self).__name__} root not found: {self.root}")
        self.split = split
        self.tasks = tuple(self.available_tasks if tasks is None else tasks)
        unknown = [t for t in self.tasks if t not in self.available_tasks]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no task(s) {unknown}; available: {list(self.available_tasks)}")
        self.transform = transform
        self.records: list[Record] = self.list_records()
        if not self.records:
            raise ValueError(f"{type(self).__name__}: no samples for split {split!r} under {self.root}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def list_records(self) -> list[Record]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> dict:
        """The decoded sample without transforms (what ``vtagml data check`` inspects)."""
        rec = self.records[index]
        if not rec.image.is_file():
            raise FileNotFoundError(f"image not found: {rec.image}")
        sample: dict = {"image": read_rgb(rec.image), "name": rec.id}
        size = tuple(sample["image"].shape[-2:])
        for task in self.tasks:
            paths = rec.labels.get(task)
            if not paths or not all(p.is_file() for p in paths):
                if self.missing_labels_ok:
                    continue
                missing = [str(p) for p in (paths or ()) if not p.is_file()] or [f"(no file listed for {task})"]
                raise FileNotFoundError(f"{type(self).__name__} sample {rec.id!r}: {task} label not found: {missing}")
            try:
                value: Tensor = getattr(self, f"decode_{task}")(*paths)
            except (ValueError, RuntimeError, IndexError) as err:  # a file the decoder cannot take: name it
                if any(str(p) in str(err) for p in paths):
                    raise
                raise ValueError(f"{paths[0]}: cannot decode the {task} label: {err}") from err
            if task == "semseg" and self._class_table is not None:
                value = self._class_table[value]
            if tuple(value.shape[-2:]) != size:
                raise ValueError(f"{paths[0]}: {task} label is {tuple(value.shape[-2:])}, image {rec.image} is {size}")
            validate_label(self, task, value, paths[0])  # the rules `vtagml data check` reports
            sample[task] = value
        return sample

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample


def as_label(x, dtype=torch.float32) -> Tensor:
    """A NumPy (H, W) or (H, W, C) array as a (1, H, W) / (C, H, W) tensor (int64 (H, W) for ids)."""
    if x.ndim not in (2, 3):
        raise ValueError(f"expected an H x W or H x W x C array, got shape {x.shape}")
    t = torch.from_numpy(x.copy() if not x.flags.writeable else x)
    if dtype == torch.int64:
        return t.long()
    t = t.to(dtype)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def unit_normals(n: Tensor) -> Tensor:
    """(3, H, W) vectors -> unit vectors; vectors of (near) zero length stay zero (invalid)."""
    norm = n.norm(dim=0, keepdim=True)
    return torch.where(norm > 1e-6, n / norm.clamp_min(1e-6), torch.zeros_like(n))
