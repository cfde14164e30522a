"""Reading the files of real datasets; every error names the file at fault."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """An 8-bit image file as float (3, H, W) in [0, 1]."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _png_header(path: str | os.PathLike) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for a non-PNG file."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG with its stored bit depth: uint8 or uint16, (H, W) or (H, W, C) in file channel order.

    Pillow reads 8-bit images and 16-bit grayscale exactly but truncates 16-bit colour PNGs
    to their high bytes, so those go through OpenCV (``pip install "vtagml[synthia]"``).
    """
    header = _png_header(path)
    if header is not None and header[0] == 16 and header[1] in (2, 6):  # 16-bit RGB / RGBA
        try:
            import cv2
        except ImportError as err:
            raise ImportError(f"{path} is a 16-bit colour PNG, which Pillow cannot read exactly; "
                              f'install OpenCV: pip install "vtagml[synthia]"') from err
        arr = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"cannot read PNG {path}")
        return np.ascontiguousarray(arr[..., ::-1]) if arr.ndim == 3 else arr  # BGR -> file order
    try:
        with Image.open(path) as img:
            arr = np.array(img)
    except Exception as err:
        raise ValueError(f"cannot read PNG {path}: {err}") from err
    return arr.astype(np.uint16) if arr.dtype in (np.int32, np.uint16, np.int16) else arr


def read_npy(path: str | os.PathLike) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"cannot read array {path}: {err}") from err


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as err:
        raise ValueError(f"cannot read JSON {path}: {err}") from err
