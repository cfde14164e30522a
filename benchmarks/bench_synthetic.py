"""Synthetic scene generation speed on one core: samples per second and ratio to the target.

Each size renders ``--n`` scenes ``--repeat`` times; the best round is reported (the least
disturbed by other processes), with the median beside it.

Usage: python benchmarks/bench_synthetic.py [--n 500] [--repeat 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from vtagml.data.synthetic import render_scene  # noqa: E402

TARGET = 500.0  # samples/s at 64x64 on one core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'size':>10} {'best/s':>9} {'median/s':>9} {'ms/sample':>10} {'best vs target':>15}")
    for size in (64, (64, 96), 128):
        render_scene(0, "train", 0, "a", size)
        rates = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for i in range(args.n):
                render_scene(0, "train", i, "a", size)
            rates.append(args.n / (time.perf_counter() - start))
        best = max(rates)
        print(f"{str(size):>10} {best:9.1f} {statistics.median(rates):9.1f} {1000 / best:10.2f} {best / TARGET:15.2f}")


if __name__ == "__main__":
    main()
