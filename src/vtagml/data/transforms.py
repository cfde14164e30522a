"""Joint, label-consistent geometric augmentation of sample dicts.

Images are resampled bilinearly (antialiased when shrinking); labels with nearest neighbours,
so class ids stay ids, depth values stay metres (resizing does not rescale depth) and normals
stay unit vectors. A horizontal flip uses each task's own ``hflip`` (normals negate x).
Padding uses each label's invalid value (255 for classes, 0 elsewhere). A sample's
``intrinsics`` (3x3, pixels, principal point in the pixel-edge convention) follow every step.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vtagml.data.collate import NON_LABEL_KEYS

IGNORE_INDEX = 255


def _as_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize_label(label: Tensor, size: tuple[int, int]) -> Tensor:
    if label.dim() == 2:
        return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].to(label.dtype)
    return F.interpolate(label[None].float(), size=size, mode="nearest")[0].to(label.dtype)


def _fill(label: Tensor) -> int:
    return IGNORE_INDEX if not label.is_floating_point() else 0


def _pad(x: Tensor, h: int, w: int, value: float) -> Tensor:
    ph, pw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if not (ph or pw):
        return x
    if x.dim() == 2:
        return F.pad(x[None], (0, pw, 0, ph), value=value)[0]
    return F.pad(x, (0, pw, 0, ph), value=value)


class JointTransform:
    """Random scale, random crop and horizontal flip (training), or a fixed resize (evaluation).

    Args:
        crop_size: output (H, W) of the random crop (None: no crop).
        scale_range: random rescale factor range before cropping.
        hflip: flip with probability 0.5.
        resize: resize to this (H, W) before anything else (evaluation at a fixed size).
        flips: per-task flip functions (``Task.hflip``); other labels are mirrored plainly.
    """

    def __init__(self, crop_size: int | Sequence[int] | None = None, scale_range: Sequence[float] = (1.0, 1.0),
                 hflip: bool = False, resize: int | Sequence[int] | None = None,
                 flips: dict[str, Callable[[Tensor], Tensor]] | None = None):
        self.crop = _as_hw(crop_size)
        self.resize = _as_hw(resize)
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range, self.hflip, self.flips = (lo, hi), hflip, flips or {}

    @staticmethod
    def _intrinsics(sample: dict, scale=(1.0, 1.0), shift=(0.0, 0.0), flip_width: int | None = None) -> None:
        k = sample.get("intrinsics")
        if k is None:
            return
        k = k.clone()
        k[0, :3] *= scale[1]
        k[1, :3] *= scale[0]
        k[0, 2] -= shift[1]
        k[1, 2] -= shift[0]
        if flip_width is not None:
            k[0, 2] = flip_width - k[0, 2]
        sample["intrinsics"] = k

    def _resize(self, sample: dict, size: tuple[int, int]) -> dict:
        out = dict(sample)
        img = sample["image"]
        if tuple(img.shape[-2:]) == size:
            return out
        self._intrinsics(out, scale=(size[0] / img.shape[-2], size[1] / img.shape[-1]))
        antialias = size[0] < img.shape[-2]
        out["image"] = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                                     antialias=antialias)[0].clamp_(0, 1)
        for key in self._labels(sample):
            out[key] = _resize_label(sample[key], size)
        return out

    @staticmethod
    def _labels(sample: dict) -> list[str]:
        return [k for k, v in sample.items() if k not in NON_LABEL_KEYS and isinstance(v, Tensor) and v.dim() >= 2]

    def __call__(self, sample: dict) -> dict:
        if self.resize is not None:
            sample = self._resize(sample, self.resize)
        lo, hi = self.scale_range
        if hi != 1.0 or lo != 1.0:
            s = random.uniform(lo, hi)
            h, w = sample["image"].shape[-2:]
            sample = self._resize(sample, (max(1, round(h * s)), max(1, round(w * s))))
        if self.crop is not None:
            ch, cw = self.crop
            sample = dict(sample)
            sample["image"] = _pad(sample["image"], ch, cw, 0.0)
            for key in self._labels(sample):
                sample[key] = _pad(sample[key], ch, cw, _fill(sample[key]))
            h, w = sample["image"].shape[-2:]
            top, left = random.randint(0, h - ch), random.randint(0, w - cw)
            self._intrinsics(sample, shift=(top, left))
            for key in ["image", *self._labels(sample)]:
                sample[key] = sample[key][..., top:top + ch, left:left + cw].contiguous()
        if self.hflip and random.random() < 0.5:
            sample = dict(sample)
            self._intrinsics(sample, flip_width=sample["image"].shape[-1])
            sample["image"] = sample["image"].flip(-1)
            for key in self._labels(sample):
                flip = self.flips.get(key, lambda x: x.flip(-1))
                sample[key] = flip(sample[key])
        return sample
