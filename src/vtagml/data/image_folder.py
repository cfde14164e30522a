"""A folder of ordinary images (PNG/JPEG, any size) for ``vtagml predict``."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from vtagml.data.io import read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    """Images of ``root`` (sorted, non-recursive) as ``{"image", "name"}`` samples."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        return {"image": read_rgb(path), "name": path.stem}
