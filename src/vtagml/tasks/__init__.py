"""Task specs: channels, losses, metrics, display, and the registry of named tasks."""

from vtagml.tasks.base import (TASK_REGISTRY, Task, build_task, build_tasks, primary_metrics, register_task,
                               task_from_spec)
from vtagml.tasks.builtin import ClassMapped, Depth, Edges, Intensity, SemanticSegmentation, SurfaceNormals
from vtagml.tasks.metrics import multitask_gain

__all__ = [
    "TASK_REGISTRY", "Task", "build_task", "build_tasks", "primary_metrics", "register_task", "task_from_spec",
    "ClassMapped", "Depth", "Edges", "Intensity", "SemanticSegmentation", "SurfaceNormals", "multitask_gain",
]
