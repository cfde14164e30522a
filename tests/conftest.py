"""Shared fixtures: tiny Swin configurations and backbone checkpoints written in real formats."""

import os

import pytest
import torch
from safetensors.torch import save_file

from vtagml.models.backbone import create_backbone

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))

#: A tiny Swin (V1) whose stage 3 has 4 blocks and 2x2 windows, so 64x64 inputs give
#: several windows and shifted blocks in the adapted stages.
TINY_SWIN = dict(name="swin_tiny_patch4_window7_224",
                 kwargs=dict(embed_dim=16, depths=(1, 1, 4, 2), num_heads=(1, 2, 2, 4), window_size=2))
TINY_SWINV2 = dict(name="swinv2_tiny_window8_256",
                   kwargs=dict(embed_dim=16, depths=(1, 1, 4, 2), num_heads=(1, 2, 2, 4), window_size=2))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialized tiny Swin saved as safetensors (as a user's local weights)."""
    torch.manual_seed(123)
    net = create_backbone(TINY_SWIN["name"], 64, **TINY_SWIN["kwargs"])
    path = tmp_path_factory.mktemp("weights") / "tiny_swin.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_v2_checkpoint(tmp_path_factory):
    torch.manual_seed(321)
    net = create_backbone(TINY_SWINV2["name"], 64, **TINY_SWINV2["kwargs"])
    # make the post-norm weights non-trivial (timm zero-inits none, but be explicit)
    path = tmp_path_factory.mktemp("weights") / "tiny_swinv2.pth"
    torch.save({"model": net.state_dict()}, path)
    return path
