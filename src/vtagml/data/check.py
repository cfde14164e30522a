"""``vtagml data check --dataset NAME --root DIR``: validate a download before a long run.

Counts samples per split, decodes every task file of every sample (or ``--limit`` per split)
exactly as training does, prints per-task presence and value ranges, and exits 1 naming the
file if any is missing or bad. The rules (:func:`validate_label`) are the ones the loaders apply
to every sample, so training on a bad file fails naming it too.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch
from torch import Tensor

IGNORE = 255


@functools.lru_cache(maxsize=64)
def _kind(task: str) -> str | None:
    """The registered task's kind (``classes``, ``depth``, ``normals``...), None if unregistered."""
    from vtagml.tasks import build_tasks
    try:
        return build_tasks([task], num_classes=2)[0].kind
    except (KeyError, ValueError):
        return None


def validate_label(dataset, task: str, value: Tensor, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``value`` is a well-formed decoded ``task`` label.

    Rules, by task kind: shapes (H, W) for classes, (3, H, W) for normals, (1, H, W) otherwise;
    float labels finite; class ids in ``0..num_classes-1`` or 255 (ignore); depth in metres,
    ``>= 0`` and at most ``dataset.max_depth`` (catches millimetres); edges and intensities in [0, 1].
    """
    kind = _kind(task)
    where = f"{path}: {type(dataset).__name__} {task} label"
    channels = {"classes": (), "normals": (3,), "depth": (1,), "edges": (1,), "intensity": (1,)}.get(kind)
    if channels is not None and tuple(value.shape[:-2]) != channels:
        expected = "(H, W) class ids" if kind == "classes" else f"({', '.join(map(str, channels))}, H, W)"
        raise ValueError(f"{where} decodes to shape {tuple(value.shape)}, expected {expected}; "
                         f"is the file's array shape right?")
    if value.is_floating_point():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise ValueError(f"{where}: {bad} of {value.numel()} values are NaN or infinite")
    if kind == "classes":
        n = dataset.num_classes
        bad = (value < 0) | ((value >= n) & (value != IGNORE))
        if bad.any():
            ids = torch.unique(value[bad])[:10].tolist()
            raise ValueError(f"{where}: class id(s) {ids} after decoding, outside the dataset's {n} classes "
                             f"(0..{n - 1}; {IGNORE} = ignore)")
    elif kind == "depth" and value.numel():
        lo, hi = float(value.min()), float(value.max())
        if lo < 0:
            raise ValueError(f"{where}: negative value {lo:.4g} (depth is metres, 0 = invalid)")
        limit = getattr(dataset, "max_depth", None)
        if limit is not None and hi > limit:
            raise ValueError(f"{where}: values up to {hi:.4g}, beyond the {limit:g} m plausible for "
                             f"{type(dataset).__name__}; expected metres (millimetres or centimetres?)")
    elif kind in ("edges", "intensity") and value.numel():
        lo, hi = float(value.min()), float(value.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{where}: values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")


def check(dataset: str, root: str, splits: list[str], tasks: list[str] | None = None, limit: int | None = None,
          dataset_kwargs: dict | None = None, out=None) -> int:
    """Returns the number of problems found (0 = the dataset is usable)."""
    from vtagml.data.datamodule import dataset_registry
    from vtagml.tasks import build_tasks
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples per split (or None for all), got {limit}")
    cls = dataset_registry()[dataset]
    out = out or sys.stdout
    problems = 0
    for split in splits:
        try:
            ds = cls(root, split=split, tasks=tasks, **(dataset_kwargs or {}))
        except (OSError, ValueError) as err:
            print(f"[{split}] ERROR {err}", file=out)
            problems += 1
            continue
        n = len(ds) if limit is None else min(limit, len(ds))
        specs = {t.name: t for t in build_tasks(ds.tasks, num_classes=ds.num_classes)}
        present = {t: 0 for t in ds.tasks}
        lo = {t: float("inf") for t in ds.tasks}
        hi = {t: float("-inf") for t in ds.tasks}
        classes: set[int] = set()
        for i in range(n):
            try:
                sample = ds.load(i)  # decodes and validates every label (validate_label)
            except Exception as err:  # noqa: BLE001  (report every bad sample, then fail)
                print(f"[{split}] ERROR sample {ds.records[i].id}: {type(err).__name__}: {err}", file=out)
                problems += 1
                continue
            for t in ds.tasks:
                if t not in sample:
                    continue
                present[t] += 1
                label = sample[t].unsqueeze(0)
                valid = specs[t].valid_mask(label)
                v = label[valid.expand_as(label)] if label.dim() == 4 else label[valid[:, 0]]
                if t == "semseg":
                    classes.update(torch.unique(v).tolist())
                if v.numel():
                    lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
        print(f"[{split}] {len(ds)} samples, checked {n} (value ranges over valid pixels)", file=out)
        for t in ds.tasks:
            rng = f"[{lo[t]:.4g}, {hi[t]:.4g}]" if present[t] else "-"
            extra = f", classes seen {len(classes)} of {ds.num_classes}" if t == "semseg" and present[t] else ""
            print(f"  {t:<16} present in {present[t]}/{n}  values {rng}{extra}", file=out)
    print("OK" if problems == 0 else f"{problems} problem(s) found", file=out)
    return problems


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (samples checked per split), got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    from vtagml.data.datamodule import dataset_registry
    parser = argparse.ArgumentParser(prog="vtagml data check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(dataset_registry()))
    parser.add_argument("--root", required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--limit", type=_positive_int, default=None, help="samples checked per split (default: all)")
    args = parser.parse_args(argv)
    sys.exit(1 if check(args.dataset, args.root, args.splits, args.tasks, args.limit) else 0)
