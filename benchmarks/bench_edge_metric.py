"""Edge ODS-F counting time per image: the current ``vtagml.tasks.bsds`` vs an older revision of it.

The baseline is ``src/vtagml/tasks/bsds.py`` as committed at ``--baseline`` (read with ``git show``).
Both count the same trained-model-like predictions of synthetic scenes (blurred ground-truth
edges, misses and smooth clutter), alternating round by round on one thread; the table prints the
median milliseconds per image and the median of the per-round ratios, and checks that the
per-threshold counts are identical.

Usage: python benchmarks/bench_edge_metric.py [--baseline e339f4b] [--rounds 5] [--large 1]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from vtagml.data.synthetic import render_scene  # noqa: E402
from vtagml.tasks import bsds  # noqa: E402


def baseline_module(rev: str) -> types.ModuleType:
    """``vtagml.tasks.bsds`` as committed at ``rev``."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:src/vtagml/tasks/bsds.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"bsds_{rev}")
    exec(compile(source, f"bsds@{rev}", "exec"), module.__dict__)
    return module


def model_like(index: int, size) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic scene's edges and a prediction like a trained model's: blurred, with clutter."""
    gt = render_scene(0, "val", index, "a", size)["edges"] > 0
    rng = np.random.default_rng(index)
    scale = gt.shape[0] / 64
    blur = gaussian_filter(gt.astype(float), scale)
    noise = gaussian_filter(rng.normal(size=gt.shape), 2 * scale)
    logit = 7 * blur / (blur.max() + 1e-9) - 4.5 + 1.2 * noise / (noise.std() + 1e-9)
    return 1 / (1 + np.exp(-logit)), gt


def time_per_image(module, data, levels, radius) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    counts = [module.edge_counts(p, g, levels, radius) for p, g in data]
    return (time.perf_counter() - start) / len(data) * 1e3, np.stack(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="e339f4b", help="git revision of the reference implementation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=8, help="64x64 images per round")
    parser.add_argument("--large", type=int, default=1, help="480x640 images per round (0: skip)")
    args = parser.parse_args()
    old = baseline_module(args.baseline)
    cases = [((64, 64), 0.0075, args.small), ((480, 640), 0.011, args.large)]
    print(f"{'size':>8} {'K':>3} {'old ms/img':>11} {'new ms/img':>11} {'speed-up':>9}  counts")
    for (h, w), max_dist, n in cases:
        if n == 0:
            continue
        data = [model_like(i, (h, w)) for i in range(n)]
        radius = max(1.0, bsds.match_radius(h, w, max_dist))  # EdgeODSF's default min_pixels
        for levels in (bsds.bsds_thresholds(99)[4::5], bsds.bsds_thresholds(99)):
            t_old, t_new, ratios = [], [], []
            for _ in range(args.rounds):
                a, counts_old = time_per_image(old, data, levels, radius)
                b, counts_new = time_per_image(bsds, data, levels, radius)
                if not np.array_equal(counts_old, counts_new):
                    sys.exit(f"counts differ at {h}x{w}, K = {levels.size}")
                t_old.append(a), t_new.append(b), ratios.append(a / b)
            print(f"{h}x{w:<4} {levels.size:>3} {statistics.median(t_old):>11.1f} {statistics.median(t_new):>11.1f} "
                  f"{statistics.median(ratios):>8.1f}x  identical", flush=True)


if __name__ == "__main__":
    main()
