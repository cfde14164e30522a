"""LightningDataModules. ``num_classes`` and ``tasks`` are declared here and linked into the
model by the CLI, so a task list is written once."""

from __future__ import annotations

import multiprocessing
import os
import re
import warnings
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vtagml.data.collate import collate_multitask
from vtagml.data.image_folder import ImageFolder, ReadableImages
from vtagml.data.synthetic import SEMSEG_CLASSES, SYNTHETIC_TASKS, SyntheticScenes
from vtagml.data.transforms import JointTransform, augmentation_generator
from vtagml.machine import usable_cpus


class EpochShuffleSampler(DistributedSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    Lightning calls ``set_epoch`` at every epoch start. The permutation is that of
    ``DistributedSampler(shuffle=True, seed=seed)``; with ``num_replicas`` processes each takes its
    share, so a global batch holds the same samples as on one process. ``with_epoch=True`` yields
    ``(index, epoch)`` keys for :class:`SeededAugmentation` (this reaches persistent workers too).
    """

    def __init__(self, data_source, seed: int = 0, num_replicas: int = 1, rank: int = 0, with_epoch: bool = False):
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.with_epoch = with_epoch

    def __iter__(self):
        indices = super().__iter__()
        return ((i, self.epoch) for i in indices) if self.with_epoch else indices


class SeededAugmentation(Dataset):
    """``dataset`` with its random joint transform drawn per (seed, epoch, sample index), so a
    sample gets the same augmentation at the same epoch whatever the worker count, and on resume.

    Indexed by ``(index, epoch)`` keys (:class:`EpochShuffleSampler` with ``with_epoch=True``);
    ``dataset`` needs ``load(index)`` (the untransformed sample) and a ``transform`` that takes a
    ``generator`` (:class:`~vtagml.data.transforms.JointTransform`).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        sample = self.dataset.load(index)
        return self.dataset.transform(sample, generator=augmentation_generator(self.seed, epoch, index))


def _seeded(dataset: Dataset) -> bool:
    """Whether ``dataset`` applies a random :class:`JointTransform` that :class:`SeededAugmentation` can seed."""
    transform = getattr(dataset, "transform", None)
    return isinstance(transform, JointTransform) and transform.is_random and hasattr(dataset, "load")


class MultitaskDataModule(L.LightningDataModule):
    """Base of vtagml's datamodules (the CLI's ``data`` type): multitask collation, workers,
    pinning, seeded shuffling and a predict folder. Subclasses fill ``self.datasets`` in
    ``setup`` and set ``tasks`` and ``num_classes``, which the CLI links into the model."""

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, persistent_workers: bool,
                 predict_dir: str | os.PathLike | None, seed: int = 0):
        super().__init__()
        self.seed = seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers and num_workers > 0
        self.predict_dir = predict_dir
        self.datasets: dict[str, Dataset] = {}

    @property
    def edge_max_dist(self) -> float | None:
        """Edge ODS-F match distance (fraction of the image diagonal) of the data's dataset class."""
        cls = getattr(self, "dataset_cls", None)
        return getattr(cls, "edge_max_dist", None)

    def _loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"no {split} dataset: call setup() for the right stage first")
        dataset = self.datasets[split]
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = None
        if split == "predict" and isinstance(dataset, ImageFolder):
            dataset = ReadableImages(dataset, rank, world)  # unreadable images: skipped with a warning
            # Lightning's generic notes on iterable datasets do not apply: ReadableImages shards itself
            # (so its length is exact) and PredictionWriter needs no batch indices
            for note in ("Your `IterableDataset` has `__len__` defined", "Couldn't infer the batch indices"):
                warnings.filterwarnings("ignore", message=re.escape(note))
        elif shuffle:
            # an (seed, epoch) shuffle shared out over DDP processes (Lightning keeps a DistributedSampler)
            # and random augmentation per (seed, epoch, index)
            seeded = _seeded(dataset)
            dataset = SeededAugmentation(dataset, self.seed) if seeded else dataset
            sampler = EpochShuffleSampler(dataset, self.seed, num_replicas=world, rank=rank, with_epoch=seeded)
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers, collate_fn=collate_multitask,
                          drop_last=shuffle and len(dataset) > self.batch_size)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("predict", batch_size=1)  # images may differ in size

    def _setup_predict(self) -> None:
        if self.predict_dir is None:
            raise ValueError("predicting needs data.predict_dir: a folder of images")
        self.datasets["predict"] = ImageFolder(self.predict_dir)


class SyntheticDataModule(MultitaskDataModule):
    """Synthetic multitask scenes (the embedded default data).

    Args:
        tasks: labels to load and tasks for the model (default: semseg, depth, normals, edges).
        size: image size, an int or (H, W).
        domain: appearance domain of train/val/test; ``test_domain`` overrides it for testing
            (novel-domain evaluation).
        train_samples, val_samples, test_samples: split sizes.
        seed: dataset seed.
        in_memory: keep rendered samples in memory (each scene renders once; loader workers that
            fork inherit the scenes rendered in ``setup``).
        cache_dir: optional disk cache of rendered samples.
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader options.
        predict_dir: folder of images for ``predict``.
        render_workers: processes that render the in-memory scenes in ``setup``, before training
            (None: where processes fork, as on Linux, this process's share of the node's cores,
            at least its CPU threads; else 1, in this process; 0, or a ``fast_dev_run``: render
            lazily, as the loader first asks). Every DDP process renders the whole split.
    """

    dataset_cls = SyntheticScenes

    def __init__(self, tasks: Sequence[str] = ("semseg", "depth", "normals", "edges"), size: int | Sequence[int] = 64,
                 domain: str = "a", test_domain: str | None = None, train_samples: int = 2000,
                 val_samples: int = 200, test_samples: int = 200, seed: int = 0, in_memory: bool = True,
                 cache_dir: str | None = None, batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = True, predict_dir: str | None = None, render_workers: int | None = None):
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, predict_dir, seed)
        unknown = [t for t in tasks if t not in SYNTHETIC_TASKS]
        if unknown:
            raise ValueError(f"synthetic scenes have no task(s) {unknown}; available: {list(SYNTHETIC_TASKS)}")
        self.tasks = list(tasks)
        self.num_classes = len(SEMSEG_CLASSES)
        self.class_names = list(SEMSEG_CLASSES)
        self.kw = dict(size=size, seed=seed, tasks=self.tasks, cache_dir=cache_dir, in_memory=in_memory)
        self.domain, self.test_domain = domain, test_domain or domain
        self.sizes = dict(train=train_samples, val=val_samples, test=test_samples)
        if render_workers is not None and render_workers < 0:
            raise ValueError(f"render_workers must be >= 0 or None, got {render_workers}")
        self.render_workers = render_workers

    def _render_workers(self) -> int:
        """Renderer processes: the given count or, where worker processes fork, this process's share
        of the cores it may run on (divided among the trainer's processes on this node; at least
        its CPU threads: under ``torchrun``, ``OMP_NUM_THREADS=1`` says nothing of the cores);
        else 1, in this process."""
        if self.render_workers is not None:
            return self.render_workers
        method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
        if method != "fork":
            return 1  # spawned workers re-import the user's script (its `__main__` guard): only when asked
        local_processes = self.trainer.num_devices if self.trainer is not None else 1
        return max(torch.get_num_threads(), usable_cpus() // local_processes)

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
        quick_run = self.trainer is not None and bool(self.trainer.fast_dev_run)  # a few batches: render lazily
        for split in splits.get(stage, ("train", "val", "test")):
            if split not in self.datasets:
                domain = self.test_domain if split == "test" else self.domain
                self.datasets[split] = SyntheticScenes(split=split, domain=domain, num_samples=self.sizes[split],
                                                       **self.kw)
            if self.kw["in_memory"] and self.render_workers != 0 and not quick_run:
                self.datasets[split].render_all(self._render_workers())  # the scenes not yet rendered
        if stage == "predict":
            self._setup_predict()


def dataset_registry() -> dict[str, type]:
    """Dataset name (as in configs and ``vtagml data check``) -> class."""
    from vtagml.data.cityscapes import Cityscapes
    from vtagml.data.nyud import NYUDv2
    from vtagml.data.synthia import Synthia
    from vtagml.data.taskonomy import Taskonomy
    return {"nyudv2": NYUDv2, "taskonomy": Taskonomy, "cityscapes": Cityscapes, "synthia": Synthia}


class FolderDataModule(MultitaskDataModule):
    """A real dataset read from its published layout (no conversion step).

    Args:
        dataset: ``nyudv2``, ``taskonomy``, ``cityscapes`` or ``synthia``.
        root: the dataset folder.
        tasks: library task names to load and train.
        train_split, val_split, test_split: split names (None: no such stage).
        crop_size: training crop (H, W); ``scale_range`` and ``hflip`` set the augmentation.
        eval_size: resize evaluation images to this (H, W); labels keep their native size and
            predictions are resized back to it (the reference evaluators' protocol). None: native size.
        dataset_kwargs: extra dataset arguments (``buildings``, ``split_csv``, ``num_classes``, ``class_map``...), or
            per split as ``{"train": {...}, "val": {...}}``.
        batch_size, num_workers, pin_memory, persistent_workers, predict_dir, seed: loader options.
    """

    def __init__(self, dataset: str, root: str, tasks: Sequence[str], train_split: str | None = "train",
                 val_split: str | None = "val", test_split: str | None = None,
                 crop_size: Sequence[int] | None = None, scale_range: Sequence[float] = (0.75, 1.25),
                 hflip: bool = True, eval_size: Sequence[int] | None = None, dataset_kwargs: dict | None = None,
                 batch_size: int = 8, num_workers: int = 4, pin_memory: bool = True, persistent_workers: bool = True,
                 predict_dir: str | None = None, seed: int = 0):
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, predict_dir, seed)
        registry = dataset_registry()
        if dataset not in registry:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(registry)}")
        self.dataset_cls, self.root, self.tasks = registry[dataset], root, list(tasks)
        unknown = [t for t in self.tasks if t not in self.dataset_cls.available_tasks]
        if unknown:
            raise ValueError(f"{dataset} has no task(s) {unknown}; available: {list(self.dataset_cls.available_tasks)}")
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.kwargs = dict(dataset_kwargs or {})
        self.num_classes = len(self._classes())
        self.crop_size, self.scale_range, self.hflip, self.eval_size = crop_size, scale_range, hflip, eval_size

    def _split_kwargs(self, split: str) -> dict:
        if split in self.kwargs and isinstance(self.kwargs[split], dict):
            return dict(self.kwargs[split])
        return {k: v for k, v in self.kwargs.items() if k not in ("train", "val", "test")}

    def _classes(self) -> tuple[str, ...]:
        kw = self._split_kwargs("train")
        if kw.get("class_map") is not None:
            from vtagml.data.class_maps import class_map
            return class_map(kw["class_map"])[1]
        if "num_classes" in kw:
            from vtagml.data.class_maps import cityscapes_classes
            return cityscapes_classes(kw["num_classes"])
        return self.dataset_cls.classes

    def _transform(self, train: bool):
        from vtagml.tasks import build_tasks
        tasks = build_tasks(self.tasks, num_classes=self.num_classes)
        flips = {t.name: t.hflip for t in tasks}
        if train:
            return JointTransform(crop_size=self.crop_size, scale_range=self.scale_range, hflip=self.hflip, flips=flips,
                                  depth_keys=[t.name for t in tasks if t.kind == "depth"])
        return JointTransform(resize=self.eval_size, resize_labels=False) if self.eval_size else None

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
        for split in wanted.get(stage, ("train", "val", "test")):
            name = self.splits.get(split)
            if name is None or split in self.datasets:
                continue
            self.datasets[split] = self.dataset_cls(self.root, split=name, tasks=self.tasks,
                                                    transform=self._transform(split == "train"),
                                                    **self._split_kwargs(split))
        if stage == "predict":
            self._setup_predict()
