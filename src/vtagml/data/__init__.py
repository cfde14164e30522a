"""Datasets (synthetic and real), collation and datamodules; every dataset yields one sample dict."""

from vtagml.data.collate import collate_multitask
from vtagml.data.datamodule import SyntheticDataModule
from vtagml.data.image_folder import ImageFolder
from vtagml.data.synthetic import DOMAINS, SEMSEG_CLASSES, SYNTHETIC_TASKS, SyntheticScenes, render_scene

__all__ = ["DOMAINS", "SEMSEG_CLASSES", "SYNTHETIC_TASKS", "ImageFolder", "SyntheticDataModule", "SyntheticScenes",
           "collate_multitask", "render_scene"]
