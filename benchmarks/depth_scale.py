"""How much of a trained model's depth error is scale, on the demo's synthetic validation split.

    python benchmarks/depth_scale.py vtagml-demo/model [--samples 200]

Prints δ1 (max(pred/gt, gt/pred) < 1.25 over valid pixels), δ1 after per-image median scaling
(what a perfect per-image scale would give), the spread of the per-image log scale error and its
correlation with the scene's depth (regression to the mean), and the ceiling set by the camera
height the renderer draws at random: δ1 of the *exact* depth map scaled as if the camera stood
at the single best height (what a model that cannot see the height could reach at best).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vtagml.data.synthetic import SyntheticScenes, sample_geometry
from vtagml.models.vtagml import VTAGML
from vtagml.tasks.metrics import DepthDelta

THRESHOLD = 1.25


def delta1(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """The depth task's δ1 metric over the valid (gt > 0) pixels."""
    metric = DepthDelta(THRESHOLD)
    metric.update(pred, gt, gt > 0)
    return float(metric.compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved model directory (vtagml demo's model/)")
    parser.add_argument("--samples", type=int, default=200, help="validation scenes (the demo evaluates 200)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (the demo's: 0)")
    parser.add_argument("--domain", default="a")
    args = parser.parse_args()
    net = VTAGML.from_adapters(args.model).eval()
    if "depth" not in net.task_names:
        raise SystemExit(f"the model in {args.model} has no depth task ({net.task_names})")
    ds = SyntheticScenes(split="val", num_samples=args.samples, tasks=("depth",), domain=args.domain,
                         size=net.config["img_size"], seed=args.seed)
    preds, gts = [], []
    with torch.no_grad():
        for start in range(0, len(ds), 50):
            batch = [ds[i] for i in range(start, min(start + 50, len(ds)))]
            preds.append(net(torch.stack([b["image"] for b in batch]), tasks=["depth"])["depth"])
            gts.append(torch.stack([b["depth"] for b in batch]))
    pred, gt = torch.cat(preds), torch.cat(gts)
    valid = gt > 0
    log_err = pred.clamp_min(1e-6).log() - gt.clamp_min(1e-6).log()
    scale = torch.stack([log_err[i][valid[i]].median() for i in range(len(pred))])
    gt_median = torch.stack([gt[i][valid[i]].median() for i in range(len(pred))])
    heights = np.array([sample_geometry(args.seed, "val", args.domain, i)["cam"][2] for i in range(len(ds))])
    grid = np.linspace(heights.min(), heights.max(), 161)
    best = max(grid, key=lambda h: float((np.abs(np.log(heights / h)) < np.log(THRESHOLD)).mean()))
    prior = gt * torch.tensor(best / heights, dtype=gt.dtype).view(-1, 1, 1, 1)
    rows = [
        ("delta1", delta1(pred, gt)),
        ("delta1 after per-image median scaling", delta1(pred * torch.exp(-scale).view(-1, 1, 1, 1), gt)),
        ("std of the per-image log scale error", float(scale.std())),
        ("corr(log scale error, log median depth)", float(np.corrcoef(scale.numpy(), gt_median.log().numpy())[0, 1])),
        (f"delta1 of the exact depth at one camera height ({best:.2f} m)", delta1(prior, gt)),
    ]
    for name, value in rows:
        print(f"{name:<58} {value:8.4f}")


if __name__ == "__main__":
    main()
