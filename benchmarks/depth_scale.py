"""How much of a trained model's depth error is scale, on the demo's synthetic validation split.

    python benchmarks/depth_scale.py vtagml-demo/model [--samples 200] [--probe 3000]

Prints δ1 (max(pred/gt, gt/pred) < 1.25 over valid pixels), δ1 after per-image median scaling
(what a perfect per-image scale would give), the spread of the per-image log scale error and its
correlation with the scene's depth (regression to the mean), and the bound set by the camera
height the renderer draws at random: δ1 of the *exact* depth map scaled as if the camera stood
at the single best height (what a model that cannot see the height could reach at best).

The one first-order scale cue of these scenes is the room's ceiling: where it shows, the ratio of
the camera height to the room height (drawn in 2.5-3.5 m) is visible. It prints the share of scenes
that show it (more than 2 % of their pixels ceiling) and the spread of the per-image log scale error
on the scenes with and without it (scenes that show it also look less steeply down: a difference
is a hint, not a measurement of the cue alone).

It also prints the single factor on every predicted depth that maximizes δ1 on these scenes (a
factor grid of 1 % steps, 1 included) and δ1 there: whether a global recalibration of the scale
would pay (with ``--probe``, also δ1 at the training scenes' best factor).

``--probe N`` adds a linear probe: a ridge regression, fitted on N training scenes, from the mean-
and std-pooled adapted features of every stage to the per-image log scale error; its residual
spread on the validation split says whether the features hold a scale that a global scale head
could read (no better than the spread itself: they do not, linearly).

``--height-cnn N`` asks whether the images show the scale at all, to any trained network: a small
CNN (5 convolutions, GroupNorm, global pooling) trained on N training images to regress the log
camera height, against the spread of that height around its mean; as a control, the same CNN
regresses the log median depth, which the visible layout (pitch, distances) partly sets.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vtagml.data.synthetic import SEMSEG_CLASSES, SyntheticScenes, sample_geometry
from vtagml.models.vtagml import VTAGML
from vtagml.tasks.metrics import DepthDelta

THRESHOLD = 1.25
#: A scene shows the room's ceiling when more than this share of its pixels are ceiling.
CEILING_MIN = 0.02


def delta1(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """The depth task's δ1 metric over the valid (gt > 0) pixels."""
    metric = DepthDelta(THRESHOLD)
    metric.update(pred, gt, gt > 0)
    return float(metric.compute())


def ceiling_shown(semseg: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the scenes of class maps (N, H, W) whose ceiling covers more than :data:`CEILING_MIN`."""
    return (semseg == SEMSEG_CLASSES.index("ceiling")).flatten(1).float().mean(1) > CEILING_MIN


def _std(values: torch.Tensor) -> float:
    """Sample standard deviation; NaN for fewer than two values."""
    return float(values.std()) if len(values) > 1 else float("nan")


def _scenes(net: VTAGML, split: str, count: int, args,
            features: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Depth predictions, ground truth, (with ``features``) pooled adapted features (mean and std
    per stage) and whether the ceiling shows, of ``count`` scenes."""
    ds = SyntheticScenes(split=split, num_samples=count, tasks=("depth", "semseg"), domain=args.domain,
                         size=net.config["img_size"], seed=args.seed)
    preds, gts, feats, ceilings = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(ds), 50):
            batch = [ds[i] for i in range(start, min(start + 50, len(ds)))]
            images = torch.stack([b["image"] for b in batch])
            preds.append(net(images, tasks=["depth"])["depth"])
            gts.append(torch.stack([b["depth"] for b in batch]))
            ceilings.append(ceiling_shown(torch.stack([b["semseg"] for b in batch])))
            if features:
                stages = net.forward_features(images, "depth")
                feats.append(torch.cat([torch.cat([f.mean((1, 2)), f.std((1, 2))], 1) for f in stages], 1))
    return torch.cat(preds), torch.cat(gts), torch.cat(feats).double() if features else None, torch.cat(ceilings)


#: Global depth factors tried: exp(-0.2) .. exp(0.2) in steps of 0.01 in log, 1.0 exactly among them.
FACTORS = np.exp(np.arange(-20, 21) * 0.01)


def best_factor(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """The factor of :data:`FACTORS` by which ``pred`` has the highest δ1 (of equals, the closest to 1)."""
    return float(max(FACTORS, key=lambda c: (delta1(pred * float(c), gt), -abs(np.log(c)))))


def log_scale_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(N,) per-image median over valid pixels of ``log pred - log gt``."""
    valid = gt > 0
    log_err = pred.clamp_min(1e-6).log() - gt.clamp_min(1e-6).log()
    return torch.stack([log_err[i][valid[i]].median() for i in range(len(pred))])


def ridge_residual_std(x_fit: torch.Tensor, y_fit: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       penalty: float) -> float:
    """Std of ``y - prediction`` on (x, y) of a ridge regression fitted on standardized (x_fit, y_fit)."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    a, b = (x_fit - mu) / sd, (x - mu) / sd
    w = torch.linalg.solve(a.T @ a + penalty * torch.eye(a.shape[1], dtype=a.dtype), a.T @ (y_fit - y_fit.mean()))
    return float((y - (b @ w + y_fit.mean())).std())


def cnn_residual_std(x_fit: torch.Tensor, y_fit: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     epochs: int = 12, batch: int = 64, seed: int = 0) -> float:
    """Std of ``y - prediction`` on (x, y) of a small CNN trained on images x_fit (N, 3, H, W) to y_fit."""
    torch.manual_seed(seed)
    layers, cin = [], 3
    for cout, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 2)):
        layers += [torch.nn.Conv2d(cin, cout, 3, stride, 1), torch.nn.GroupNorm(8, cout), torch.nn.ReLU()]
        cin = cout
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, 1))
    steps = epochs * (len(x_fit) // batch)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    mu = y_fit.mean()
    for _ in range(epochs):
        perm = torch.randperm(len(x_fit))
        for i in range(0, len(x_fit) - batch + 1, batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.mse_loss(net(x_fit[idx]).squeeze(1), y_fit[idx] - mu)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + 256]).squeeze(1) for i in range(0, len(x), 256)]) + mu
    return float((y - pred).std())


def _height_cnn_rows(args, size) -> list[tuple[str, float]]:
    """The --height-cnn rows: log camera height and log median depth, prior spread and CNN residual."""
    data = {}
    for split, count in (("train", args.height_cnn), ("val", args.samples)):
        ds = SyntheticScenes(split, size, args.domain, count, args.seed, ("depth",), in_memory=True)
        ds.render_all(torch.get_num_threads())
        samples = [ds[i] for i in range(count)]
        height = [np.log(sample_geometry(args.seed, split, args.domain, i)["cam"][2]) for i in range(count)]
        data[split] = (torch.stack([s["image"] for s in samples]), torch.tensor(height, dtype=torch.float32),
                       torch.stack([s["depth"][s["depth"] > 0].median().log() for s in samples]))
    (x_fit, h_fit, d_fit), (x, h, d) = data["train"], data["val"]
    rows = []
    for name, y_fit, y in (("log camera height", h_fit, h), ("log median depth (control)", d_fit, d)):
        rows.append((f"std of the {name} around its mean", float((y - y_fit.mean()).std())))
        rows.append((f"  after a CNN trained on {args.height_cnn} images", cnn_residual_std(x_fit, y_fit, x, y)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved model directory (vtagml demo's model/)")
    parser.add_argument("--samples", type=int, default=200, help="validation scenes (the demo evaluates 200)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (the demo's: 0)")
    parser.add_argument("--domain", default="a")
    parser.add_argument("--probe", type=int, default=0, help="training scenes of the linear scale probe (0: none)")
    parser.add_argument("--penalty", type=float, default=1000.0, help="ridge penalty of the probe (on standardized features)")
    parser.add_argument("--height-cnn", type=int, default=0, help="training images of the camera-height CNN (0: none)")
    args = parser.parse_args()
    net = VTAGML.from_adapters(args.model).eval()
    if "depth" not in net.task_names:
        raise SystemExit(f"the model in {args.model} has no depth task ({net.task_names})")
    pred, gt, feats, ceiling = _scenes(net, "val", args.samples, args, features=bool(args.probe))
    valid = gt > 0
    scale = log_scale_error(pred, gt)
    gt_median = torch.stack([gt[i][valid[i]].median() for i in range(len(pred))])
    heights = np.array([sample_geometry(args.seed, "val", args.domain, i)["cam"][2] for i in range(len(pred))])
    grid = np.linspace(heights.min(), heights.max(), 161)
    best = max(grid, key=lambda h: float((np.abs(np.log(heights / h)) < np.log(THRESHOLD)).mean()))
    prior = gt * torch.tensor(best / heights, dtype=gt.dtype).view(-1, 1, 1, 1)
    rows = [
        ("delta1", delta1(pred, gt)),
        ("delta1 after per-image median scaling", delta1(pred * torch.exp(-scale).view(-1, 1, 1, 1), gt)),
        ("std of the per-image log scale error", float(scale.std())),
        ("corr(log scale error, log median depth)", float(np.corrcoef(scale.numpy(), gt_median.log().numpy())[0, 1])),
        (f"delta1 of the exact depth at one camera height ({best:.2f} m)", delta1(prior, gt)),
        ("share of the scenes that show the room's ceiling", float(ceiling.float().mean())),
        ("std of the per-image log scale error where the ceiling shows", _std(scale[ceiling])),
        ("std of the per-image log scale error where it does not", _std(scale[~ceiling])),
    ]
    factor = best_factor(pred, gt)
    rows += [("best global depth factor on these scenes", factor), ("delta1 at that factor", delta1(pred * factor, gt))]
    if args.probe:
        fit_pred, fit_gt, fit_feats, _ = _scenes(net, "train", args.probe, args, features=True)
        fit_factor = best_factor(fit_pred, fit_gt)
        rows += [(f"best global depth factor on the {args.probe} training scenes", fit_factor),
                 ("delta1 at the training scenes' factor", delta1(pred * fit_factor, gt))]
        rows.append((f"std of the log scale error after a linear probe ({args.probe} scenes)",
                     ridge_residual_std(fit_feats, log_scale_error(fit_pred, fit_gt).double(), feats, scale.double(),
                                        args.penalty)))
    if args.height_cnn:
        rows += _height_cnn_rows(args, net.config["img_size"])
    for name, value in rows:
        print(f"{name:<62} {value:8.4f}")


if __name__ == "__main__":
    main()
