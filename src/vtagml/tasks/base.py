"""The task contract and the task registry.

A :class:`Task` says everything the model, losses, metrics, augmentations and visualizations
need about one dense prediction target, so that adding a task is one object:

- ``name`` (the sample-dict key), ``kind`` (output family: tasks of one kind can be composed
  for zero-shot transfer), ``channels`` (head outputs) and ``weight`` (loss weight);
- ``postprocess``: raw head output -> model prediction (e.g. softplus for depth);
- ``valid_mask``: which target pixels carry a label;
- ``loss``: masked mean over valid pixels of present samples (zero when none);
- ``build_metrics`` / ``update_metrics``: split-level torchmetrics, ``primary_metric`` first
  (the one metric per task that the multitask gain averages);
- ``to_label``: prediction -> label space (class ids, probabilities), for saving and display;
- ``colorize``: label-space map of one sample -> uint8 RGB (H, W, 3) for people;
- ``hflip`` for geometric augmentation (labels are resampled with nearest neighbours).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn


class Task:
    """Base class of dense prediction tasks; subclasses fill in the task-specific parts."""

    kind: str = "dense"
    #: key of the metric that ranks models and enters the multitask gain (first in ``build_metrics``)
    primary_metric: str = ""

    def __init_subclass__(cls, **kwargs):
        """Record every task's constructor arguments (outermost call), so :meth:`spec` can rebuild it."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if not hasattr(self, "_init_args"):
                bound = inspect.signature(init).bind(self, *args, **kw)
                bound.apply_defaults()
                self._init_args = {k: v for k, v in bound.arguments.items() if k != "self"}
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def spec(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}``: what :func:`task_from_spec` rebuilds this task from
        (the form LightningCLI configs use). Arguments must be plain values (JSON-serializable)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(getattr(self, "_init_args", {}))}

    def __init__(self, name: str, channels: int, weight: float = 1.0):
        if channels < 1:
            raise ValueError(f"task {name!r}: channels must be >= 1, got {channels}")
        if weight < 0:
            raise ValueError(f"task {name!r}: weight must be >= 0, got {weight}")
        self.name, self.channels, self.weight = name, int(channels), float(weight)

    def _pick_loss(self, loss: str, choices: dict[str, Callable]) -> Callable:
        """The masked loss function named ``loss`` among ``choices``; a clear error otherwise."""
        if loss not in choices:
            raise ValueError(f"task {self.name!r}: loss must be one of {sorted(choices)}, got {loss!r}")
        self.loss_name = loss
        return choices[loss]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, channels={self.channels}, weight={self.weight})"

    # -- model side
    def init_head(self, conv: nn.Conv2d) -> None:
        """Initialize the task's 1x1 output conv (e.g. a bias at the output's typical value)."""

    def postprocess(self, raw: Tensor) -> Tensor:
        return raw

    def to_label(self, pred: Tensor) -> Tensor:
        return pred

    # -- supervision
    def valid_mask(self, target: Tensor) -> Tensor:
        """Bool (B, 1, H, W): pixels of ``target`` that carry a label."""
        return torch.ones_like(target[:, :1], dtype=torch.bool)

    def masked_valid(self, target: Tensor, present: Tensor | None) -> Tensor:
        """:meth:`valid_mask` restricted to samples whose label is present ((B,) bool)."""
        valid = self.valid_mask(target)
        if present is not None:
            valid = valid & present.view(-1, 1, 1, 1).to(valid.device)
        return valid

    #: masked loss ``fn(pred, target, valid) -> scalar`` (set by subclasses)
    loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor]

    def loss(self, pred: Tensor, target: Tensor, present: Tensor | None = None) -> Tensor:
        """Mean of ``loss_fn`` over valid pixels of present samples; exactly 0 when there are none."""
        return self.loss_fn(pred, target, self.masked_valid(target, present))

    # -- evaluation
    def build_metrics(self, approximate: bool = False) -> nn.ModuleDict:
        """Fresh split-level metrics keyed by name, :attr:`primary_metric` first.

        ``approximate`` allows a cheaper approximation where a task has one (the edges' ODS-F on
        a coarser threshold grid), for validation during training; final numbers use the default.
        """
        raise NotImplementedError

    def update_metrics(self, metrics: nn.ModuleDict, pred: Tensor, target: Tensor,
                       present: Tensor | None = None) -> None:
        valid = self.masked_valid(target, present)
        for metric in metrics.values():
            metric.update(pred, target, valid)

    # -- augmentation and display
    def hflip(self, label: Tensor) -> Tensor:
        """Mirror a (C, H, W) or (H, W) label left-right."""
        return label.flip(-1)

    def colorize(self, label: Tensor) -> np.ndarray:
        """One sample's label-space map -> uint8 (H, W, 3)."""
        x = label.detach().float().cpu()
        x = x[0] if x.dim() == 3 else x
        return (x.clamp(0, 1).numpy()[..., None].repeat(3, -1) * 255).round().astype(np.uint8)


def task_from_spec(spec: dict[str, Any]) -> Task:
    """The task described by :meth:`Task.spec` (its class is imported by path)."""
    try:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except (KeyError, ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot rebuild task from {spec!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"{spec['class_path']!r} is not a vtagml Task class")
    return cls(**spec.get("init_args", {}))


TaskFactory = Callable[..., Task]

#: Name -> factory. A factory takes keyword options (``num_classes`` for classification
#: tasks, ``weight``) and returns a :class:`Task` whose ``name`` is the registry name.
TASK_REGISTRY: dict[str, TaskFactory] = {}


def register_task(name: str, factory: TaskFactory) -> None:
    """Register ``factory`` under ``name``; a name is registered once."""
    if name in TASK_REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    TASK_REGISTRY[name] = factory


def build_task(spec: str | Task, **options) -> Task:
    """A task from a registered name (``options`` go to its factory) or a ready :class:`Task`."""
    if isinstance(spec, Task):
        return spec
    if spec not in TASK_REGISTRY:
        raise KeyError(f"unknown task {spec!r}; registered tasks: {sorted(TASK_REGISTRY)}")
    return TASK_REGISTRY[spec](**options)


def primary_metrics(tasks) -> dict[str, str]:
    """Task name -> primary metric name, the ``primary`` argument of
    :func:`~vtagml.tasks.metrics.multitask_gain`; every task must declare one."""
    missing = [t.name for t in tasks if not t.primary_metric]
    if missing:
        raise ValueError(f"task(s) {missing} declare no primary_metric")
    return {t.name: t.primary_metric for t in tasks}


def build_tasks(specs, num_classes: int | None = None, weights: dict[str, float] | None = None,
                options: dict[str, dict[str, Any]] | None = None) -> list[Task]:
    """Tasks from names or objects; ``num_classes`` reaches classification tasks only; ``options``
    are keyword arguments of tasks given by name (e.g. ``{"depth": {"loss": "silog"}}``)."""
    tasks = []
    for spec in specs:
        if isinstance(spec, Task):
            tasks.append(spec)
            continue
        kwargs = dict((options or {}).get(spec, {}))
        if weights and spec in weights:
            kwargs["weight"] = weights[spec]
        factory = TASK_REGISTRY.get(spec)
        if factory is not None and getattr(factory, "needs_num_classes", False):
            if num_classes is None:
                raise ValueError(f"task {spec!r} needs num_classes (from the dataset or the config)")
            kwargs["num_classes"] = num_classes
        tasks.append(build_task(spec, **kwargs))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names in {names}")
    return tasks
