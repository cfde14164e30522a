"""``vtagml demo``: train VTAGML adapters on the embedded synthetic scenes and report.

On a 2-core CPU with no network, in about 5 minutes: loads the packaged small Swin
(pretrained by :mod:`vtagml.pretrain` on other scenes and another appearance domain),
trains adapters, decoders and heads for semseg, depth, normals and edges on domain ``a``,
evaluates on the validation split, and writes to ``--out``:

- ``metrics.json``: per-task metrics, parameter counts, wall time, images per second;
- ``affinity.csv`` / ``affinity.png``: the TROA task affinities A (``metrics.json`` also holds
  the conditioning weights alpha);
- ``predictions.png``: image / ground truth / prediction per task for a few validation samples;
- ``vtagml-demo.ckpt`` (Lightning checkpoint, resumable) and ``model/`` (``config.json`` and
  ``adapters.safetensors``: the trained model as a directory, ``VTAGML.from_adapters``; what
  ``vtagml add-task``, ``zero-shot`` and ``adapt`` read).
"""

from __future__ import annotations

import argparse
import json
import operator
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from vtagml.data.datamodule import SyntheticDataModule
from vtagml.data.io import atomic_write
from vtagml.engine.artifacts import AffinityArtifacts, prediction_grid
from vtagml.engine.checkpoint import AtomicCheckpointIO
from vtagml.machine import describe_device
from vtagml.engine.module import MultitaskModule
from vtagml.models.vtagml import VTAGML
from vtagml.pretrain import DEMO_BACKBONE, demo_weights_path

DEMO_TASKS = ("semseg", "depth", "normals", "edges")
#: The demo's model options beyond the backbone: bottleneck adapters as wide as the block (r = 1:
#: the demo Swin's blocks are 96 and 192 wide; with the Jaccard term, r = 2 gave mIoU 0.600); semseg adds
#: the soft Jaccard loss to its cross-entropy (mIoU weighs every class alike: the small object
#: classes are where it falls short); depth learns its shape apart from its scale (scale-invariant
#: log loss); the edge head predicts each pixel of its stride-2 decoder's 2x2 cells (one-pixel
#: labels; a stride-1 decoder costs 1.5x the training step).
#: Training length: fits 5 minutes on 2 CPU cores, everything included (more scenes beat more epochs).
DEMO_EPOCHS, DEMO_TRAIN_SAMPLES = 4, 6000
DEMO_NET = dict(adapt_last_k=4, embed_dim=64, decoder_channels=48, bottleneck_reduction=1,
                task_options={"semseg": {"jaccard_weight": 1.0}, "depth": {"loss": "silog"}},
                head_upsample={"edges": "pixel_shuffle"})
#: The scenes repeat unaugmented every epoch: after the first, the frozen trunk's outputs come
#: from memory (about 50 KB a scene; :class:`~vtagml.engine.trunk_cache.TrunkCache`).
DEMO_TRUNK_CACHE_GB = 1.0
#: Quality the demo aims for on the validation split: (metric, direction, target).
TARGETS = {"semseg/miou": (">=", 0.60), "depth/delta1": (">=", 0.80), "normals/mean_angle": ("<=", 20.0),
           "edges/odsf": (">=", 0.80)}


def build_demo(train_samples: int = DEMO_TRAIN_SAMPLES, val_samples: int = 200, batch_size: int = 16, lr: float = 4e-3,
               seed: int = 0, weights: Path | None = None) -> tuple[MultitaskModule, SyntheticDataModule]:
    """The demo's model and data (also what ``configs/demo.yaml`` describes)."""
    dm = SyntheticDataModule(tasks=DEMO_TASKS, size=DEMO_BACKBONE["img_size"], domain="a", train_samples=train_samples,
                             val_samples=val_samples, test_samples=val_samples, seed=seed, batch_size=batch_size,
                             in_memory=True)
    net = VTAGML(DEMO_BACKBONE["name"], tasks=DEMO_TASKS, num_classes=dm.num_classes, img_size=DEMO_BACKBONE["img_size"],
                 checkpoint_path=weights or demo_weights_path(), backbone_kwargs=DEMO_BACKBONE["kwargs"], **DEMO_NET)
    return MultitaskModule(net, lr=lr, weight_decay=0.01, troa=True, trunk_cache_gb=DEMO_TRUNK_CACHE_GB), dm


def _check_targets(per_task: dict[str, dict[str, float]]) -> dict:
    """``{"task/metric": {"target": ">= 0.6", "met": bool}}`` for the targets of measured tasks."""
    compare = {">=": operator.ge, "<=": operator.le}
    out = {}
    for key, (op, target) in TARGETS.items():
        task, name = key.split("/")
        if task in per_task:
            out[key] = {"target": f"{op} {target:g}", "met": bool(compare[op](per_task[task][name], target))}
    return out


def _table(metrics: dict) -> str:
    lines = [f"{'task':<10} {'metric':<14} {'value':>10} {'target':>10}", "-" * 47]
    for task, values in metrics.items():
        for name, value in values.items():
            key = f"{task}/{name}"
            target = f"{TARGETS[key][0]} {TARGETS[key][1]:g}" if key in TARGETS else ""
            lines.append(f"{task:<10} {name:<14} {value:>10.4f} {target:>10}")
    return "\n".join(lines)


def demo_trainer(out: Path, epochs: int, precision: str = "32-true") -> L.Trainer:
    """The demo's trainer: one checkpoint ``out/vtagml-demo.ckpt``, replaced atomically at every
    save (a kill leaves the previous one or the new one, complete)."""
    return L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, default_root_dir=out, precision=precision,
                     logger=CSVLogger(out, name="logs"), gradient_clip_val=1.0, num_sanity_val_steps=0,
                     limit_val_batches=0,  # evaluated once, after training (per-epoch validation: 15% of the time)
                     enable_model_summary=False, log_every_n_steps=10, plugins=[AtomicCheckpointIO()],
                     callbacks=[ModelCheckpoint(dirpath=out, filename="vtagml-demo", enable_version_counter=False),
                                AffinityArtifacts(out)])


def _write_json(obj, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def run_demo(out: Path, epochs: int = DEMO_EPOCHS, train_samples: int = DEMO_TRAIN_SAMPLES, batch_size: int = 16, lr: float = 4e-3,
             seed: int = 0, weights: Path | None = None, precision: str = "32-true") -> dict:
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True)
    module, dm = build_demo(train_samples, 200, batch_size, lr, seed, weights)
    trainer = demo_trainer(out, epochs, precision)
    fit_start = time.time()
    trainer.fit(module, dm)
    fit_seconds = time.time() - fit_start
    eval_start = time.time()
    trainer.test(module, dataloaders=dm.val_dataloader(), verbose=False)
    eval_seconds = time.time() - eval_start

    per_task: dict[str, dict[str, float]] = {}
    for key, value in module.last_test_metrics.items():
        task, name = key.split("/", 1)
        per_task.setdefault(task, {})[name] = round(value, 6)
    net = module.net.eval()
    samples = [dm.datasets["val"][i] for i in range(6)]
    images = torch.stack([s["image"] for s in samples])
    with torch.no_grad():
        preds = net(images.to(module.device))
    labels = {t.name: t.to_label(preds[t.name]).cpu() for t in net.tasks}
    targets = {t.name: torch.stack([s[t.name] for s in samples]) for t in net.tasks}
    prediction_grid(images, targets, labels, net.tasks, out / "predictions.png")
    net.save_adapters(out / "model")

    report = net.parameter_report()
    trained_images = trainer.current_epoch * len(dm.datasets["train"]) if trainer.current_epoch else 0
    result = {
        "tasks": per_task,
        "targets": _check_targets(per_task),
        "parameters": {"trainable": report["total"]["trainable"],
                       "total": report["total"]["trainable"] + report["total"]["frozen"],
                       "trainable_fraction": round(report["trainable_fraction"], 4),
                       "per_component": {k: v for k, v in report.items() if isinstance(v, dict) and k != "total"}},
        "affinity": {"tasks": net.task_names,
                     "A": [[round(float(v), 4) for v in row] for row in net.task_affinity()],
                     "alpha": [[round(float(v), 4) for v in row] for row in net.conditioning_weights()]},
        "epochs": trainer.current_epoch,
        "train_images_per_s": round(trained_images / fit_seconds, 1),
        "eval_images_per_s": round(len(dm.datasets["val"]) / eval_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "wall_time_s": round(time.time() - start, 1),
        "device": str(module.device),
        "machine": describe_device(module.device),
        "precision": str(trainer.precision),
    }
    atomic_write(out / "metrics.json", lambda tmp: _write_json(result, tmp))
    print("\n" + _table(per_task))
    print(f"\ntrainable parameters {result['parameters']['trainable']:,} of {result['parameters']['total']:,} "
          f"({100 * result['parameters']['trainable_fraction']:.1f}%); {result['train_images_per_s']} train img/s; "
          f"wall time {result['wall_time_s']:.0f} s on {result['machine']}")
    print(f"wrote {out}/metrics.json, affinity.csv, affinity.png, predictions.png, vtagml-demo.ckpt, "
          f"model/ (config.json, adapters.safetensors)")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vtagml demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("vtagml-demo"), help="output folder")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--train-samples", type=int, default=DEMO_TRAIN_SAMPLES)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=None, help="backbone weights (default: the packaged ones)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                        help="bf16-mixed: bfloat16 autocast (CPUs with AMX or AVX512-BF16, GPUs); the figures "
                             "of the README are float32's")
    args = parser.parse_args(argv)
    run_demo(args.out, args.epochs, args.train_samples, args.batch_size, args.lr, args.seed, args.weights,
             args.precision)


if __name__ == "__main__":
    main()
