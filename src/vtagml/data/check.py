"""``vtagml data check --dataset NAME --root DIR``: validate a download before a long run.

Counts samples per split, decodes every task file of every sample (or ``--limit`` per split),
prints per-task presence and value ranges, and exits non-zero if any file is missing or bad.
"""

from __future__ import annotations

import argparse
import sys

import torch

from vtagml.data.datamodule import dataset_registry
from vtagml.tasks import build_tasks


def check(dataset: str, root: str, splits: list[str], tasks: list[str] | None = None, limit: int | None = None,
          dataset_kwargs: dict | None = None, out=None) -> int:
    """Returns the number of problems found (0 = the dataset is usable)."""
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
                sample = ds.load(i)
            except (OSError, ValueError, ImportError) as err:
                print(f"[{split}] ERROR sample {ds.records[i].id}: {err}", file=out)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vtagml data check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(dataset_registry()))
    parser.add_argument("--root", required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--limit", type=int, default=None, help="samples checked per split")
    args = parser.parse_args(argv)
    sys.exit(1 if check(args.dataset, args.root, args.splits, args.tasks, args.limit) else 0)
