"""Frozen timm Swin / Swin V2 backbones: creation, local checkpoints, and the trunk split.

The backbone is any timm Swin or Swin V2 model name (``swin_tiny_patch4_window7_224``,
``swinv2_base_window12_192.ms_in22k``...), optionally with architecture overrides for a small
CPU model (``embed_dim``, ``depths``, ``num_heads``, ``window_size``). Weights come from timm
(``pretrained=True``, needs the hub) or a local file (``checkpoint_path``: ``.safetensors``
or a ``.pth``/``.pt``/``.bin`` state dict, also in the original Swin repository's format).
``vtagml://weights/demo_swin.safetensors`` names a file shipped inside the installed package (the
demo backbone), wherever the package is installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

_SWIN_MODULES = ("swin_transformer", "swin_transformer_v2")
#: Keys a local checkpoint may carry that the feature backbone does not use.
_UNUSED_PREFIXES = ("head.", "norm.")
#: Prefix of a checkpoint path inside the installed ``vtagml`` package.
PACKAGE_SCHEME = "vtagml://"


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` as a local file; ``vtagml://REL`` is ``REL`` inside the installed package
    (``vtagml://weights/demo_swin.safetensors``: the demo backbone)."""
    text = os.fspath(path)
    if not text.startswith(PACKAGE_SCHEME):
        return Path(text)
    import vtagml
    package = Path(vtagml.__file__).resolve().parent
    rel = text[len(PACKAGE_SCHEME):]
    resolved = (package / rel).resolve()
    if package not in resolved.parents or not resolved.is_file():
        shipped = sorted(f"{PACKAGE_SCHEME}weights/{p.name}" for p in (package / "weights").glob("*.safetensors"))
        raise FileNotFoundError(f"{text} is not a file shipped with vtagml (shipped weights: {shipped})")
    return resolved


def _is_swin(model: nn.Module) -> bool:
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.swin_transformer_v2 import SwinTransformerV2
    return isinstance(model, (SwinTransformer, SwinTransformerV2))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint: safetensors, or a torch file loaded with ``weights_only``.

    A torch file may hold the state dict itself or under ``state_dict`` / ``model``.
    """
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read backbone checkpoint {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local checkpoint into a timm Swin; error names missing and unexpected keys.

    The classifier head and final norm may be absent or extra (they are not used for dense
    prediction). The original Swin format is converted by timm's own ``checkpoint_filter_fn``
    (which also resizes position tables and patch embeddings), but the layout is decided here:
    timm up to 1.0.30 takes every checkpoint without ``head.fc.weight`` (a headless one, such as
    the demo weights) for the original layout and would shift its patch-merging layers by a stage.
    """
    state = read_state_dict(path)
    module = __import__(type(model).__module__, fromlist=["checkpoint_filter_fn"])
    if hasattr(module, "checkpoint_filter_fn"):
        # the original Swin repository merges patches at the end of a stage (stage 0 has one), timm
        # at the start of the next (stage 0 has none)
        original_layout = any(k.startswith("layers.0.downsample.") for k in state)
        if not original_layout and "head.fc.weight" not in state:
            state = dict(state, **{"head.fc.weight": torch.empty(0)})  # timm's own mark of its layout
        try:
            state = module.checkpoint_filter_fn(state, model)
        except Exception as err:  # shapes or names that timm cannot convert
            raise ValueError(f"backbone checkpoint {path} does not match {type(model).__name__} "
                             f"(timm's conversion failed: {type(err).__name__}: {err})") from err
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(_UNUSED_PREFIXES)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        def first(items):
            return f"{items[:20]}{' ...' if len(items) > 20 else ''}"
        raise ValueError(f"backbone checkpoint {path} does not match {type(model).__name__}: missing keys "
                         f"{first(missing)}; unexpected keys {first(unexpected)}; wrong shapes {first(mismatched)}")
    model.load_state_dict(state, strict=False)


def create_backbone(
    name: str,
    img_size: int | tuple[int, int] = 224,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    **overrides,
) -> nn.Module:
    """A timm Swin/Swin V2 without classifier that accepts any input size (dynamic masks)."""
    if pretrained and checkpoint_path:
        raise ValueError("give either pretrained=True or checkpoint_path, not both")
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {name!r}")
    if timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1] not in _SWIN_MODULES:
        raise ValueError(f"backbone {name!r} is not a Swin; vtagml adapts timm's Swin and Swin V2")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, img_size=img_size,
                                  strict_img_size=False, drop_path_rate=0.0, **overrides)
    except RuntimeError as err:
        raise ValueError(f"cannot create backbone {name!r}: {err}") from err
    if not _is_swin(model):
        raise ValueError(f"backbone {name!r} is a {type(model).__name__}; vtagml adapts Swin and Swin V2")
    if checkpoint_path:
        load_backbone_checkpoint(model, checkpoint_path)
    return model


@dataclass
class SwinSplit:
    """A Swin cut into a task-agnostic trunk and per-task adaptable blocks.

    Layouts are NHWC throughout (timm Swin's own).

    Attributes:
        patch_embed: image (B, 3, H, W) -> (B, H/4, W/4, C1).
        trunk_stages: full stages before the adapted ones; their outputs are skip features.
        trunk_head: the second-to-last stage's downsample and its first ``depth - k`` blocks;
            its output is the encoded embedding z.
        adapted_blocks: the last k blocks of the second-to-last stage.
        last_downsample: the last stage's patch merging (frozen, run per task).
        last_blocks: every block of the last stage.
        channels, reductions: per stage, from timm's ``feature_info``.
    """

    patch_embed: nn.Module
    trunk_stages: nn.ModuleList
    trunk_head: nn.Sequential
    adapted_blocks: list[nn.Module]
    last_downsample: nn.Module
    last_blocks: list[nn.Module]
    channels: list[int]
    reductions: list[int]


def split_swin(model: nn.Module, adapt_last_k: int = 4) -> SwinSplit:
    """Split ``model`` so that the last ``adapt_last_k`` blocks of the second-to-last stage and
    the whole last stage are adapted (the paper's default: blocks 15-18 of stage 3 and stage 4)."""
    stages = list(model.layers)
    if len(stages) < 2:
        raise ValueError("a Swin with at least two stages is needed")
    third, last = stages[-2], stages[-1]
    depth = len(third.blocks)
    if not 0 <= adapt_last_k <= depth:
        raise ValueError(f"adapt_last_k must be in [0, {depth}] for this backbone, got {adapt_last_k}")
    info = model.feature_info
    return SwinSplit(
        patch_embed=model.patch_embed,
        trunk_stages=nn.ModuleList(stages[:-2]),
        trunk_head=nn.Sequential(third.downsample, *list(third.blocks)[: depth - adapt_last_k]),
        adapted_blocks=list(third.blocks)[depth - adapt_last_k:],
        last_downsample=last.downsample,
        last_blocks=list(last.blocks),
        channels=[int(i["num_chs"]) for i in info],
        reductions=[int(i["reduction"]) for i in info],
    )
