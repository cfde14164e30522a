"""Models: the frozen-trunk split of a timm Swin, the VTAGML model, decoders."""

from vtagml.models.backbone import create_backbone, load_backbone_checkpoint, split_swin
from vtagml.models.decoders import FPNDecoder, SwinUNetDecoder
from vtagml.models.vtagml import VTAGML, SavedModel

__all__ = ["VTAGML", "SavedModel", "FPNDecoder", "SwinUNetDecoder", "create_backbone", "load_backbone_checkpoint", "split_swin"]
