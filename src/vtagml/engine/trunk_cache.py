"""Reuse of the frozen trunk's outputs for images seen before.

The trunk is frozen and runs without dropout, so an image's trunk outputs (``z`` and the skips)
are the same at every epoch. When a dataset yields the same images again (no random
augmentation: the demo's scenes, a validation split), :class:`TrunkCache` keeps them after the
first pass and the trunk is skipped from then on. Images are keyed by their content (a hash of
their bytes, taken on the host before the batch moves to its device): a changed or augmented
image is simply a new key, so the outputs used are always those of the very same image. Entries
are also keyed by how they were computed (device, autocast precision, trunk dtype): a bf16 fit
followed by an fp32 test, or a move to another device, encodes the images again.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from vtagml.models.vtagml import VTAGML, Encoded


def image_keys(images: Tensor) -> list[bytes]:
    """A content key per image of a host batch (B, ...): its shape, dtype and a 128-bit BLAKE2b of its bytes."""
    if images.device.type != "cpu":
        raise ValueError(f"image keys are taken on the host, before the batch moves; got a {images.device} tensor")
    header = f"{tuple(images.shape[1:])}{images.dtype}".encode()
    raw = images.detach().contiguous().reshape(len(images), -1).view(torch.uint8).numpy()  # any dtype, bf16 too
    return [hashlib.blake2b(header + row.tobytes(), digest_size=16).digest() for row in raw]


def compute_context(net: VTAGML, images: Tensor) -> tuple:
    """How the trunk would encode ``images`` now: their device, the autocast dtype there (None when
    off) and the trunk's parameter dtype. Outputs computed in another context differ numerically."""
    device = images.device
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    param = next(net.trunk.parameters(), None)
    return str(device), autocast, None if param is None else param.dtype


class TrunkCache:
    """Frozen-trunk outputs of every image encoded so far, up to ``max_bytes`` (per process).

    Args:
        max_bytes: memory the cached outputs may take (on the device they were computed on);
            when full, new images are encoded but not kept.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.clear()

    def clear(self) -> None:
        """Forget every entry (the trunk's weights changed, e.g. a checkpoint was loaded)."""
        self.entries: dict[tuple[tuple, bytes], tuple[Tensor, list[Tensor]]] = {}  # (context, image key)
        self.bytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _keep(self, key: tuple[tuple, bytes], z: Tensor, skips: list[Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in [z, *skips])
        if key not in self.entries and self.bytes + size <= self.max_bytes:
            self.entries[key] = (z.clone(), [s.clone() for s in skips])  # not views of the whole batch
            self.bytes += size

    def encode(self, net: VTAGML, images: Tensor, keys: list[bytes]) -> Encoded:
        """``net.encode(images)``: the trunk runs on the images not cached yet (all of them at a first
        epoch), the others' outputs come from the cache (those computed in this same context)."""
        if net.train_trunk:
            raise ValueError("a TrunkCache needs a frozen trunk (train_trunk=False): a trained trunk's outputs change")
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} image keys for a batch of {images.shape[0]} images")
        context = compute_context(net, images)
        keys = [(context, k) for k in keys]
        rows = [self.entries.get(k) for k in keys]
        new = [i for i, row in enumerate(rows) if row is None]
        self.hits, self.misses = self.hits + len(keys) - len(new), self.misses + len(new)
        if len(new) == len(keys):
            enc = net.encode(images)
            for i, key in enumerate(keys):
                self._keep(key, enc.z[i], [s[i] for s in enc.skips])
            return enc
        if new:
            fresh = net.encode(images[new])
            for j, i in enumerate(new):
                rows[i] = (fresh.z[j], [s[j] for s in fresh.skips])
                self._keep(keys[i], *rows[i])
        z = torch.stack([row[0] for row in rows])  # on the images' device: part of the context
        skips = [torch.stack([row[1][k] for row in rows]) for k in range(len(rows[0][1]))]
        return net.encode(images, trunk_outputs=(z, skips))
