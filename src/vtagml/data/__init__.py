"""Datasets (synthetic and real), collation and datamodules; every dataset yields one sample dict."""

from vtagml.data.collate import collate_multitask
from vtagml.data.cityscapes import Cityscapes
from vtagml.data.datamodule import FolderDataModule, SyntheticDataModule
from vtagml.data.image_folder import ImageFolder
from vtagml.data.nyud import NYUDv2
from vtagml.data.synthetic import DOMAINS, SEMSEG_CLASSES, SYNTHETIC_TASKS, SyntheticScenes, render_scene
from vtagml.data.synthia import Synthia
from vtagml.data.taskonomy import Taskonomy

__all__ = ["DOMAINS", "SEMSEG_CLASSES", "SYNTHETIC_TASKS", "Cityscapes", "FolderDataModule", "ImageFolder", "NYUDv2",
           "SyntheticDataModule", "SyntheticScenes", "Synthia", "Taskonomy", "collate_multitask", "render_scene"]
