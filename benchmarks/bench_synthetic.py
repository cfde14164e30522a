"""Synthetic scene generation speed, and how fast the demo's data reaches training.

1. One core: each size renders ``--n`` scenes ``--repeat`` times; the best round is reported
   (the least disturbed by other processes), with the median beside it, against the target of
   500 samples/s at 64x64.
2. The demo's pipeline (64x64, its four tasks): ``SyntheticScenes.render_all`` with 1, 2, ...
   worker processes (scenes/s, ratio to one process), then the in-memory loader of the later
   epochs (shuffled batches of 16 collated with their label masks, images/s). Both are set
   against 1000 images/s, the GPU training rate the data must not hold back.

Usage: python benchmarks/bench_synthetic.py [--n 500] [--repeat 5] [--scenes 2000] [--workers 1,2]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from vtagml.data.synthetic import render_scene  # noqa: E402

TARGET = 500.0  # samples/s at 64x64 on one core
GPU_RATE = 1000.0  # training images/s the data must keep up with (one H100, the demo)
DEMO_TASKS = ("semseg", "depth", "normals", "edges")


def generation(n: int, repeat: int) -> None:
    print(f"{'size':>10} {'best/s':>9} {'median/s':>9} {'ms/sample':>10} {'best vs target':>15}")
    for size in (64, (64, 96), 128):
        render_scene(0, "train", 0, "a", size)
        rates = []
        for _ in range(repeat):
            start = time.perf_counter()
            for i in range(n):
                render_scene(0, "train", i, "a", size)
            rates.append(n / (time.perf_counter() - start))
        best = max(rates)
        print(f"{str(size):>10} {best:9.1f} {statistics.median(rates):9.1f} {1000 / best:10.2f} {best / TARGET:15.2f}")


def pipeline(scenes: int, workers: list[int], repeat: int) -> None:
    from vtagml.data import SyntheticDataModule, SyntheticScenes

    rates: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(repeat):  # round-robin, a new seed each round (nothing is cached across rounds)
        for w in workers:
            ds = SyntheticScenes("train", 64, "a", scenes, seed=100 + r, tasks=DEMO_TASKS, in_memory=True)
            start = time.perf_counter()
            ds.render_all(w)
            rates[w].append(scenes / (time.perf_counter() - start))
    one = statistics.median(rates[workers[0]])
    print(f"\nrender_all, {scenes} scenes at 64x64 ({os.cpu_count()} CPUs), median of {repeat}")
    print(f"{'processes':>10} {'scenes/s':>9} {'vs ' + str(workers[0]):>8} {'vs 1000/s':>10}")
    for w, v in rates.items():
        m = statistics.median(v)
        print(f"{w:>10} {m:9.0f} {m / one:7.2f}x {m / GPU_RATE:9.2f}x")

    dm = SyntheticDataModule(tasks=list(DEMO_TASKS), size=64, train_samples=scenes, val_samples=16, batch_size=16,
                             render_workers=max(workers))
    dm.setup("fit")
    loader_rates = []
    for epoch in range(repeat):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += batch["image"].shape[0]
        loader_rates.append(images / (time.perf_counter() - start))
    m = statistics.median(loader_rates)
    print(f"\nin-memory loader (later epochs: shuffle and collate, batch 16, one process)")
    print(f"{'images/s':>10} {'vs 1000/s':>10}\n{m:10.0f} {m / GPU_RATE:9.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scenes", type=int, default=2000, help="scenes of the pipeline part")
    parser.add_argument("--workers", default=None, help="render_all process counts, e.g. 1,2,4 (default: 1 to all CPUs)")
    args = parser.parse_args()
    generation(args.n, args.repeat)
    cpus = os.cpu_count() or 1
    workers = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, *range(2, cpus + 1, 2), cpus})
    pipeline(args.scenes, workers, min(args.repeat, 3))


if __name__ == "__main__":
    main()
