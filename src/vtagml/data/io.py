"""Reading the files of real datasets (every error names the file at fault) and writing files
atomically (:func:`atomic_write`, the one helper for "a kill never leaves a truncated file")."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

#: Pillow modes of 16-bit (and 32-bit integer) grayscale images; their values are read as 16-bit.
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux), else set and reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], fsync: bool = True) -> None:
    """Create or replace ``path`` so that readers (and a kill at any moment) see the old file or the
    new one, never a partial one.

    ``write(tmp)`` writes the content to ``tmp``, a fresh file in the same folder whose name ends
    with ``path``'s suffix (so ``np.save`` and ``PIL`` keep the format); it is then ``fsync`` ed
    (unless ``fsync=False``: safe against kills, not power loss) and renamed over ``path``. On any
    error, or an interrupt, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_rgb(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float (3, H, W) in [0, 1], whatever its mode.

    8-bit images are divided by 255, 16-bit grayscale by 65535 (their true range, not saturated);
    grayscale becomes three equal channels, palette images their palette colours, and alpha is
    dropped (colours kept). 16-bit colour PNGs are read by Pillow at 8 bits (the right range).
    """
    try:
        with Image.open(path) as img:
            if img.mode in _GRAY16_MODES:
                gray = np.asarray(img)
                if gray.min() < 0 or gray.max() > 65535:
                    raise ValueError(f"{img.mode} image with values in [{gray.min()}, {gray.max()}], "
                                     f"outside the 16-bit range 0..65535")
                t = torch.from_numpy(gray.astype(np.float32)).div_(65535.0)
                return t.unsqueeze(0).expand(3, -1, -1).contiguous()
            if img.mode == "F":
                gray = np.asarray(img, dtype=np.float32)
                if not (np.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 1):
                    raise ValueError("a floating-point image must hold finite values in [0, 1]")
                return torch.from_numpy(gray.copy()).unsqueeze(0).expand(3, -1, -1).contiguous()
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


def read_npy(path: str | os.PathLike, allow_nonfinite: bool = False) -> np.ndarray:
    """A ``.npy`` array. Labels mark invalid pixels with 0, never NaN or inf, so non-finite
    floats are an error naming the file (unless ``allow_nonfinite``)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"cannot read array {path}: {err}") from err
    if not allow_nonfinite and arr.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{path}: {bad} of {arr.size} values are NaN or infinite "
                             f"(invalid pixels must be 0)")
    return arr


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as err:
        raise ValueError(f"cannot read JSON {path}: {err}") from err
