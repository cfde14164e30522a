"""Files for people and programs: affinity table and heatmap, prediction grids, per-image outputs."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import BasePredictionWriter, Callback  # noqa: E402
from PIL import Image  # noqa: E402

from vtagml.data.io import atomic_write  # noqa: E402


def save_affinity_csv(affinity: torch.Tensor, names: Sequence[str], path: str | os.PathLike) -> None:
    """T x T table of TROA affinities: row i, column j is A[i -> j], the share of task j's own-step
    loss decrease that a step on task i gives (diagonal 1, negative where i's step hurts j)."""
    path = Path(path)
    z = affinity.detach().cpu().double().numpy()

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["from \\ to", *names])
            for name, row in zip(names, z):
                w.writerow([name, *[f"{v:.6g}" for v in row]])
    atomic_write(path, write)


def plot_affinity(affinity: torch.Tensor, names: Sequence[str], path: str | os.PathLike,
                  title: str = "TROA task affinity  A[i → j]") -> None:
    """Annotated heatmap of the affinity matrix A (diverging colours on a fixed [-1, 1] scale,
    so heatmaps of different runs compare by eye)."""
    z = affinity.detach().cpu().double().numpy()
    lim = max(1.0, float(np.abs(z).max()))
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.2, 1.0 * len(names) + 1.6), dpi=120)
    im = ax.imshow(z, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("to task j (loss lowered)")
    ax.set_ylabel("from task i (step taken)")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{z[i, j]:.2f}", ha="center", va="center",
                    color="white" if abs(z[i, j]) > 0.6 * lim else "black", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def prediction_grid(images: torch.Tensor, targets: dict, labels: dict, tasks, path: str | os.PathLike) -> None:
    """A PNG grid: one row per sample: image, then ground truth and prediction per task."""
    rows = []
    for b in range(images.shape[0]):
        cells = [image_to_uint8(images[b])]
        for task in tasks:
            gt = targets.get(task.name)
            cells.append(task.colorize(gt[b]) if gt is not None else np.zeros_like(cells[0]))
            cells.append(task.colorize(labels[task.name][b]))
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    h, w = grid.shape[:2]
    titles = ["image"] + [f"{t.name} {kind}" for t in tasks for kind in ("GT", "pred")]
    fig, ax = plt.subplots(figsize=(max(6, w / 40), max(3, h / 40) + 0.4), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    cell = images.shape[-1]
    ax.set_xticks([cell * (i + 0.5) for i in range(len(titles))], titles, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


class AffinityArtifacts(Callback):
    """Writes ``affinity.csv`` and ``affinity.png`` to ``dirpath`` after every validation."""

    def __init__(self, dirpath: str | os.PathLike | None = None):
        self.dirpath = dirpath

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def write(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        affinity = module.net.task_affinity()
        save_affinity_csv(affinity, module.net.task_names, out / "affinity.csv")
        plot_affinity(affinity, module.net.task_names, out / "affinity.png")

    def on_validation_epoch_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.write(trainer, module)

    def on_fit_end(self, trainer, module):
        self.write(trainer, module)


class PredictionWriter(BasePredictionWriter):
    """Per image and task: a colourized PNG for people and the raw label-space array (.npy).

    Files: ``{output_dir}/{name}/{task}.png`` and ``{task}.npy`` (semseg class ids, depth metres,
    unit normals (3, H, W), edge probabilities), each written atomically. ``name`` is the image's
    stem, or its file name when several images share a stem (:class:`~vtagml.data.ImageFolder`).
    Images that could not be read are skipped (with a warning) and listed with the reason in
    ``{output_dir}/failed.txt`` at the end of the run (a stale list from an earlier run is removed).
    """

    def __init__(self, output_dir: str | os.PathLike = "predictions"):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self._written: set[str] = set()

    def on_predict_start(self, trainer, module) -> None:
        self._written = set()

    def write_on_batch_end(self, trainer, module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        tasks = {t.name: t for t in module.net.tasks}
        for b, name in enumerate(prediction["name"]):
            folder = self.output_dir / str(name)
            folder.mkdir(parents=True, exist_ok=True)
            for task_name, label in prediction["labels"].items():
                arr = label[b].detach().cpu()
                rgb = tasks[task_name].colorize(arr)
                # no fsync: os.replace alone already survives a kill, and predict writes many small files
                atomic_write(folder / f"{task_name}.npy", lambda tmp: np.save(tmp, arr.numpy()), fsync=False)
                atomic_write(folder / f"{task_name}.png", lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"),
                             fsync=False)
            self._written.add(str(name))

    def on_predict_end(self, trainer, module) -> None:
        """Lists the images of the predicted folder that got no output in ``failed.txt``."""
        from lightning.pytorch.utilities import rank_zero_warn

        from vtagml.data.image_folder import ImageFolder
        written = self._written
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, sorted(written))
            written = {n for names in gathered for n in names}
        if not trainer.is_global_zero:
            return
        loader = trainer.predict_dataloaders
        dataset = getattr(loader, "dataset", None)
        folder = getattr(dataset, "folder", dataset)
        if not isinstance(folder, ImageFolder):
            return
        lines = []
        for index, (path, name) in enumerate(zip(folder.files, folder.names)):
            if name in written:
                continue
            try:
                folder[index]
                reason = "not predicted (the run was stopped or limited)"
            except ValueError as err:
                reason = str(err)
            lines.append(f"{path}\t{reason}\n")
        failed = self.output_dir / "failed.txt"
        if not lines:
            failed.unlink(missing_ok=True)
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(failed, lambda tmp: tmp.write_text("".join(lines)))
        rank_zero_warn(f"{len(lines)} of {len(folder)} images got no prediction; listed in {failed}")
