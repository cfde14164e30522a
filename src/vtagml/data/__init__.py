"""Datasets (synthetic and real), collation and datamodules; every dataset yields one sample dict."""

from vtagml.data.synthetic import DOMAINS, SEMSEG_CLASSES, SYNTHETIC_TASKS, SyntheticScenes, render_scene

__all__ = ["DOMAINS", "SEMSEG_CLASSES", "SYNTHETIC_TASKS", "SyntheticScenes", "render_scene"]
