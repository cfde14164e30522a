"""A folder of ordinary images (PNG/JPEG, any size) for ``vtagml predict``."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vtagml.data.io import read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    """Images of ``root`` (sorted, non-recursive) as ``{"image", "name"}`` samples.

    ``name`` (the output folder of ``vtagml predict``) is the file's stem, or its whole file name
    when several images share a stem (case-insensitively: ``a.jpg`` and ``a.png`` give ``a.jpg``
    and ``a.png``), so no two images share an output and a name depends only on the folder's files.
    Reading an unreadable file raises ``ValueError`` naming it; :class:`ReadableImages` skips them.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root}")
        stems = Counter(p.stem.lower() for p in self.files)
        self.names = [p.name if stems[p.stem.lower()] > 1 else p.stem for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        return {"image": read_rgb(self.files[index]), "name": self.names[index]}


class ReadableImages(IterableDataset):
    """The samples of an :class:`ImageFolder` in order, skipping unreadable files with a warning
    that names them (the rest are still predicted).

    Shards the files over ``world_size`` processes (this one is ``rank``) and over DataLoader
    workers, so every image is read once in all.
    """

    def __init__(self, folder: ImageFolder, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.folder, self.rank, self.world_size = folder, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, len(self.folder), self.world_size))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(self.rank, len(self.folder), self.world_size)[worker::workers]:
            try:
                sample = self.folder[index]
            except ValueError as err:
                warnings.warn(f"{err}; skipped, the other images are still predicted")  # err names the file
                continue
            yield sample
