"""Joint, label-consistent geometric augmentation of sample dicts.

Images are resampled bilinearly (antialiased when shrinking); labels with nearest neighbours,
so class ids stay ids and normals stay unit vectors. A fixed resize keeps depth values; a random
zoom by ``s`` divides depth by ``s`` (a zoomed image looks ``s`` times nearer, as in the reference
NYUD pipelines; with the intrinsics scaled too this is the scene shrunk ``s`` times, seen with an
``s`` times longer focal length). A horizontal flip uses each task's own ``hflip`` (normals negate
x). Padding uses each label's invalid value (255 for classes, 0 elsewhere). A sample's
``intrinsics`` (3x3, pixels, principal point in the pixel-edge convention) follow every step.

Random draws come from a ``torch.Generator`` passed per call; :func:`augmentation_generator`
derives it from (seed, epoch, sample index), so an augmentation replays on resume and does not
depend on the number of workers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
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


def augmentation_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, sample index), well mixed (NumPy SeedSequence)."""
    key = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(key[0]))


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
        scale_range: random zoom factor range before cropping; depth labels are divided by it.
        hflip: flip with probability 0.5.
        resize: resize to this (H, W) before anything else (evaluation at a fixed size; depth kept).
        resize_labels: also resize the labels with ``resize`` (False: only the image; the reference
            evaluators' protocol, where predictions are resized back to the labels' native size).
        flips: per-task flip functions (``Task.hflip``); other labels are mirrored plainly.
        depth_keys: labels holding metric depth (divided by the zoom factor).
    """

    def __init__(self, crop_size: int | Sequence[int] | None = None, scale_range: Sequence[float] = (1.0, 1.0),
                 hflip: bool = False, resize: int | Sequence[int] | None = None, resize_labels: bool = True,
                 flips: dict[str, Callable[[Tensor], Tensor]] | None = None,
                 depth_keys: Sequence[str] = ("depth", "depth_zbuffer")):
        self.crop = _as_hw(crop_size)
        self.resize, self.resize_labels = _as_hw(resize), resize_labels
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range, self.hflip, self.flips = (lo, hi), hflip, flips or {}
        self.depth_keys = tuple(depth_keys)

    @property
    def is_random(self) -> bool:
        """Whether calls draw random numbers (scale, crop or flip)."""
        return self.scale_range != (1.0, 1.0) or self.crop is not None or self.hflip

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

    def _resize(self, sample: dict, size: tuple[int, int], labels: bool = True) -> dict:
        out = dict(sample)
        img = sample["image"]
        if tuple(img.shape[-2:]) == size:
            return out
        self._intrinsics(out, scale=(size[0] / img.shape[-2], size[1] / img.shape[-1]))
        antialias = size[0] < img.shape[-2]
        out["image"] = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                                     antialias=antialias)[0].clamp_(0, 1)
        for key in self._labels(sample) if labels else ():
            out[key] = _resize_label(sample[key], size)
        return out

    @staticmethod
    def _labels(sample: dict) -> list[str]:
        return [k for k, v in sample.items() if k not in NON_LABEL_KEYS and isinstance(v, Tensor) and v.dim() >= 2]

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        """The transformed sample; random draws come from ``generator`` (default: torch's global RNG)."""
        if self.resize is not None:
            sample = self._resize(sample, self.resize, labels=self.resize_labels)
        if not self.is_random:
            return sample
        # always four draws (zoom, top, left, flip), so each choice is independent of the others
        u_scale, u_top, u_left, u_flip = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        lo, hi = self.scale_range
        if (lo, hi) != (1.0, 1.0):
            s = lo + (hi - lo) * u_scale
            h, w = sample["image"].shape[-2:]
            size = (max(1, round(h * s)), max(1, round(w * s)))
            sample = self._resize(sample, size)
            zoom = ((size[0] / h) * (size[1] / w)) ** 0.5  # the zoom applied (s up to rounding)
            for key in self.depth_keys:
                if key in sample and zoom != 1.0:
                    sample[key] = sample[key] / zoom
        if self.crop is not None:
            ch, cw = self.crop
            sample = dict(sample)
            sample["image"] = _pad(sample["image"], ch, cw, 0.0)
            for key in self._labels(sample):
                sample[key] = _pad(sample[key], ch, cw, _fill(sample[key]))
            h, w = sample["image"].shape[-2:]
            top, left = min(int(u_top * (h - ch + 1)), h - ch), min(int(u_left * (w - cw + 1)), w - cw)
            self._intrinsics(sample, shift=(top, left))
            for key in ["image", *self._labels(sample)]:
                sample[key] = sample[key][..., top:top + ch, left:left + cw].contiguous()
        if self.hflip and u_flip < 0.5:
            sample = dict(sample)
            self._intrinsics(sample, flip_width=sample["image"].shape[-1])
            sample["image"] = sample["image"].flip(-1)
            for key in self._labels(sample):
                flip = self.flips.get(key, lambda x: x.flip(-1))
                sample[key] = flip(sample[key])
        return sample
