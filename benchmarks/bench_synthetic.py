"""Synthetic scene generation speed on one core: samples per second and ratio to the target.

Usage: python benchmarks/bench_synthetic.py [--n 300]
"""

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from vtagml.data.synthetic import render_scene  # noqa: E402

TARGET = 500.0  # samples/s at 64x64 on one core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    print(f"{'size':>10} {'samples/s':>10} {'ms/sample':>10} {'vs target':>10}")
    for size in (64, (64, 96), 128):
        render_scene(0, "train", 0, "a", size)
        start = time.perf_counter()
        for i in range(args.n):
            render_scene(0, "train", i, "a", size)
        rate = args.n / (time.perf_counter() - start)
        print(f"{str(size):>10} {rate:10.1f} {1000 / rate:10.2f} {rate / TARGET:10.2f}")


if __name__ == "__main__":
    main()
