"""Reuse of the frozen trunk's outputs for images seen before.

The trunk is frozen and runs without dropout, so an image's trunk outputs (``z`` and the skips)
are the same at every epoch. When a dataset yields the same images again (no random
augmentation: the demo's scenes, a validation split), :class:`TrunkCache` keeps them after the
first pass and the trunk is skipped from then on. Images are keyed by their content (a hash of
their bytes, taken on the host before the batch moves to its device): a changed or augmented
image is simply a new key, so the outputs used are always those of the very same image.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from vtagml.models.vtagml import VTAGML, Encoded


def image_keys(images: Tensor) -> list[bytes]:
    """A content key per image of a host batch (B, ...): its shape, dtype and a 128-bit BLAKE2b of its bytes."""
    if images.device.type != "cpu":
        raise ValueError(f"image keys are taken on the host, before the batch moves; got a {images.device} tensor")
    header = f"{tuple(images.shape[1:])}{images.dtype}".encode()
    arrays = np.ascontiguousarray(images.detach().numpy())
    return [hashlib.blake2b(header + a.tobytes(), digest_size=16).digest() for a in arrays]


class TrunkCache:
    """Frozen-trunk outputs of every image encoded so far, up to ``max_bytes``.

    Args:
        max_bytes: memory the cached outputs may take (on the device they were computed on);
            when full, new images are encoded but not kept.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes, self.bytes = int(max_bytes), 0
        self.entries: dict[bytes, tuple[Tensor, list[Tensor]]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def encode(self, net: VTAGML, images: Tensor, keys: list[bytes]) -> Encoded:
        """``net.encode(images)``, with the trunk skipped when every image of the batch is cached
        (a batch with any new image runs the trunk once for all of them and keeps the new ones)."""
        if net.train_trunk:
            raise ValueError("a TrunkCache needs a frozen trunk (train_trunk=False): a trained trunk's outputs change")
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} image keys for a batch of {images.shape[0]} images")
        found = [self.entries.get(k) for k in keys]
        if all(e is not None for e in found):
            self.hits += len(keys)
            z = torch.stack([e[0] for e in found])
            skips = [torch.stack([e[1][i] for e in found]) for i in range(len(found[0][1]))]
            return net.encode(images, trunk_outputs=(z, skips))
        self.misses += sum(e is None for e in found)
        enc = net.encode(images)
        per_image = sum(t[0].numel() * t.element_size() for t in [enc.z, *enc.skips])
        for i, (key, entry) in enumerate(zip(keys, found)):
            if entry is None and key not in self.entries and self.bytes + per_image <= self.max_bytes:
                self.entries[key] = (enc.z[i].clone(), [s[i].clone() for s in enc.skips])
                self.bytes += per_image
        return enc
