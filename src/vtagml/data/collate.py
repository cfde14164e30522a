"""Batching samples whose task labels may be missing.

A dataset leaves a task's key out of a sample when that sample has no label for it (a
Taskonomy building without normals, a target-domain image without any label).
:func:`collate_multitask` stacks each task over the batch, fills the absent samples with zeros,
and records ``batch["present"][task]``: a bool (B,) tensor. Losses and metrics receive it and
skip absent samples, so an absent label contributes exactly nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import default_collate

#: Keys that are inputs or metadata, never task labels.
NON_LABEL_KEYS = frozenset({"image", "intrinsics", "meta", "present", "name"})


def collate_multitask(samples: Sequence[dict]) -> dict:
    """Collate sample dicts into a batch with a ``present`` mask per task label."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    label_keys = sorted({k for s in samples for k in s if k not in NON_LABEL_KEYS})
    batch = default_collate([{k: v for k, v in s.items() if k not in label_keys} for s in samples])
    batch["present"] = {}
    for key in label_keys:
        example = next(s[key] for s in samples if key in s)
        labels = []
        for s in samples:
            value = s.get(key)
            if value is not None and value.shape != example.shape:
                raise ValueError(f"label {key!r} has shape {tuple(value.shape)} in one sample and "
                                 f"{tuple(example.shape)} in another; resize or crop in the dataset")
            labels.append(value if value is not None else torch.zeros_like(example))
        batch[key] = torch.stack(labels)
        batch["present"][key] = torch.tensor([key in s for s in samples], dtype=torch.bool)
    return batch
