"""Training-step time: trunk once + batched branches (vtagml) vs the whole model per task.

The official implementation replicates the batch per task, running the frozen trunk T times;
vtagml runs it once and batches only the adapted blocks, decoders and heads over tasks.
Both variants compute the same losses; the table prints milliseconds per training step
(forward + backward) and the speed-up, measured side by side in one run.

Usage: python benchmarks/bench_model.py [--steps 5] [--device cpu|cuda]
"""

import argparse
import time

import torch

from vtagml import VTAGML
from vtagml.engine.module import task_losses

TASKS = ("semseg", "depth", "normals", "edges")
CASES = [
    ("demo Swin, 64x64, batch 16", dict(backbone="swin_tiny_patch4_window7_224", img_size=64, embed_dim=64,
                                        decoder_channels=48, backbone_kwargs=dict(embed_dim=24, depths=(2, 2, 6, 2),
                                                                                  num_heads=(1, 2, 4, 8), window_size=4)),
     16, 64),
    ("Swin-T, 224x224, batch 2", dict(backbone="swin_tiny_patch4_window7_224", img_size=224, decoder_channels=64),
     2, 224),
]


def batch_for(b, size, device):
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 3, size, size, generator=g),
             "semseg": torch.randint(0, 6, (b, size, size), generator=g),
             "depth": torch.rand(b, 1, size, size, generator=g) * 5 + 0.5,
             "normals": torch.nn.functional.normalize(torch.randn(b, 3, size, size, generator=g), dim=1),
             "edges": (torch.rand(b, 1, size, size, generator=g) > 0.9).float()}
    return {k: v.to(device) for k, v in batch.items()}


def step_batched(net, batch):
    _, losses = task_losses(net, net.encode(batch["image"]), batch, list(range(len(TASKS))))
    sum(losses.values()).backward()


def step_replicated(net, batch):
    for t in range(len(TASKS)):  # the trunk runs once per task
        _, losses = task_losses(net, net.encode(batch["image"]), batch, [t])
        sum(losses.values()).backward()


def timed(fn, net, batch, steps, device):
    fn(net, batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        net.zero_grad(set_to_none=True)
        fn(net, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"{'case':<28} {'vtagml ms':>10} {'per-task ms':>12} {'speed-up':>9}")
    for name, kw, b, size in CASES:
        torch.manual_seed(0)
        net = VTAGML(tasks=TASKS, num_classes=6, **kw).to(device)
        batch = batch_for(b, size, device)
        ours = timed(step_batched, net, batch, args.steps, device)
        theirs = timed(step_replicated, net, batch, args.steps, device)
        print(f"{name:<28} {ours:10.1f} {theirs:12.1f} {theirs / ours:9.2f}")


if __name__ == "__main__":
    main()
