"""Dense decoders built from a shape map (channels and stride per encoder stage).

Inputs are NCHW feature maps, finest first, and the (normalized) image. Output: NCHW features
at ``out_stride`` of the image with ``out_channels`` channels, for a task head to read.

- :class:`FPNDecoder` (default, light on CPU): lateral 1x1 convs, a top-down pathway, all
  levels fused at stride 4, and an optional shallow image branch that restores detail at
  stride ``image_skip_stride`` (edges need it).
- :class:`SwinUNetDecoder` (the paper's): from the coarsest stage up, patch expanding x2,
  concatenation with the encoder skip, and 2 Swin blocks per stage; a final x4 expansion.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.models.swin_transformer import SwinTransformerBlock


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that normalizes CPU bfloat16 inputs in float32 and returns bfloat16: the
    CPU's bfloat16 channels-last kernel is 2-4x slower than casting around the float32 one (the
    decoders' features are channels-last; under bf16 autocast their convolutions run in bf16)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            return super().forward(x.float()).to(torch.bfloat16)
        return super().forward(x)


def _gn(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: batch-size independent, so DDP needs no SyncBN."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return GroupNorm(groups, channels)


def _conv_gn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _gn(cout), nn.ReLU(inplace=True))


def _check_shapes(in_channels: Sequence[int], strides: Sequence[int]) -> None:
    if not in_channels or len(in_channels) != len(strides):
        raise ValueError(f"decoder needs one channel count per stride, got {in_channels} and {strides}")
    if list(strides) != sorted(strides):
        raise ValueError(f"decoder inputs must be ordered finest first, got strides {strides}")


class FPNDecoder(nn.Module):
    """Feature pyramid decoder.

    Lateral 1x1 convs and a top-down pathway; one 3x3 conv per level, all levels summed at the
    finest level. With an image branch (edges need it), a shallow stem on the image restores
    detail at ``image_skip_stride``: the pyramid output is reduced to ``channels // 2`` by a 1x1
    conv and upsampled, and a 3x3 conv of the stem is added to it before a norm and ReLU. This
    is a concatenation and 3x3 conv whose pyramid part is 1x1: the upsampled pyramid is smooth,
    and the fine-stride work (where most pixels are) costs a third of the full 3x3 conv's.

    Args:
        in_channels: channels per input level (finest first), from ``feature_info``.
        strides: stride of each level relative to the image.
        channels: width of the pyramid (the output has ``channels // 2`` with an image branch).
        image_skip_stride: 1 or 2 adds a shallow image branch at that stride; 0 turns it off.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], channels: int = 64,
                 image_skip_stride: int = 2):
        super().__init__()
        _check_shapes(in_channels, strides)
        if image_skip_stride not in (0, 1, 2):
            raise ValueError(f"image_skip_stride must be 0, 1 or 2, got {image_skip_stride}")
        self.strides = list(strides)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_gn_relu(channels, channels) for _ in in_channels)
        self.image_skip_stride = image_skip_stride
        self.out_channels, self.out_stride = channels, strides[0]
        if image_skip_stride:
            fine = max(8, channels // 2)
            stem = max(8, channels // 4)
            self.reduce = nn.Conv2d(channels, fine, 1)
            self.stem = nn.Sequential(_conv_gn_relu(3, stem, image_skip_stride), _conv_gn_relu(stem, stem))
            self.refine = _conv_gn_relu(stem, fine)
            self.out_channels, self.out_stride = fine, image_skip_stride

    def set_image_stride(self, stride: int) -> None:
        """Move the image branch to stride 1 or 2 (the weights are the same at either stride), or
        remove it (0: the output is the pyramid's, at its finest stride)."""
        if not self.image_skip_stride or stride not in (0, 1, 2):
            raise ValueError(f"an image branch can move to stride 1 or 2 or be removed (0), not added; this decoder's "
                             f"is {self.image_skip_stride}, asked {stride}")
        if stride == 0:
            del self.reduce, self.stem, self.refine
            self.out_channels, self.out_stride = self.lateral[0].out_channels, self.strides[0]
            self.image_skip_stride = 0
            return
        self.stem[0][0].stride = (stride, stride)
        self.image_skip_stride = self.out_stride = stride

    def forward(self, features: Sequence[Tensor], image: Tensor | None = None) -> Tensor:
        """features: NCHW maps finest first; image (B, 3, H, W) -> (B, out_channels, H/s, W/s)."""
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:],
                                                      mode="bilinear", align_corners=False)
        size = laterals[0].shape[-2:]
        out = sum(F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) if i else s(x)
                  for i, (s, x) in enumerate(zip(self.smooth, laterals)))
        if self.image_skip_stride:
            if image is None:
                raise ValueError("this FPNDecoder has an image branch: pass the image")
            conv, norm, relu = self.refine
            detail = conv(self.stem(image))
            out = F.interpolate(self.reduce(out), size=detail.shape[-2:], mode="bilinear", align_corners=False)
            out = relu(norm(out + detail))
        return out


class _PatchExpand(nn.Module):
    """(B, H, W, Cin) -> (B, s*H, s*W, Cout) by a linear map and pixel shuffle, then LayerNorm."""

    def __init__(self, cin: int, cout: int, scale: int = 2):
        super().__init__()
        self.scale, self.cout = scale, cout
        self.expand = nn.Linear(cin, scale * scale * cout, bias=False)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, self.cout).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, h * s, w * s, self.cout))


class SwinUNetDecoder(nn.Module):
    """Swin-UNet style decoder (paper): x2 patch expanding, skip concat, 2 Swin blocks per stage.

    Args:
        in_channels, strides: per encoder level, finest first.
        channels: output channels after the final expansion to ``strides[0] / 4`` (= 1 for Swin).
        depth: Swin blocks per up stage.
        window_size: attention window of the decoder blocks.
        head_dim: channels per attention head.
        img_size: nominal input size (sets window clamping for small maps; any size runs).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], channels: int = 64, depth: int = 2,
                 window_size: int = 7, head_dim: int = 32, img_size: int | Sequence[int] = 224):
        super().__init__()
        _check_shapes(in_channels, strides)
        ih, iw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.ups, self.reduce, self.stages = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(len(in_channels) - 2, -1, -1):
            c = in_channels[i]
            res = (max(1, ih // strides[i]), max(1, iw // strides[i]))
            self.ups.append(_PatchExpand(in_channels[i + 1], c, strides[i + 1] // strides[i]))
            self.reduce.append(nn.Linear(2 * c, c))
            self.stages.append(nn.Sequential(*[
                SwinTransformerBlock(dim=c, input_resolution=res, num_heads=max(1, c // head_dim),
                                     window_size=window_size, shift_size=0 if j % 2 == 0 else window_size // 2,
                                     dynamic_mask=True)
                for j in range(depth)]))
        self.final = _PatchExpand(in_channels[0], channels, strides[0])
        self.out_channels, self.out_stride = channels, 1

    def forward(self, features: Sequence[Tensor], image: Tensor | None = None) -> Tensor:
        """features: NCHW maps finest first -> (B, channels, H, W) at stride 1."""
        feats = [f.permute(0, 2, 3, 1) for f in features]  # NHWC inside the Swin blocks
        x = feats[-1]
        for k, (up, reduce, stage) in enumerate(zip(self.ups, self.reduce, self.stages)):
            skip = feats[len(feats) - 2 - k]
            x = up(x)[:, : skip.shape[1], : skip.shape[2]]
            x = stage(reduce(torch.cat([x, skip], dim=-1)))
        return self.final(x).permute(0, 3, 1, 2)


#: How a head brings its decoder's stride-s output to the image size.
HEAD_UPSAMPLING = ("bilinear", "pixel_shuffle")


class TaskHead(nn.Module):
    """1x1 conv to the task's channels, brought to the image size.

    ``bilinear`` resizes the head's output (smooth maps: depth, normals, class scores);
    ``pixel_shuffle`` predicts ``scale``² values per decoder position, one per image pixel it
    covers (one-pixel-thin structure such as edges, at the cost of a stride-``scale`` decoder).

    Args:
        in_channels, out_channels: decoder output channels, task channels.
        scale: the decoder's output stride (used by ``pixel_shuffle``).
        upsample: one of :data:`HEAD_UPSAMPLING`.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 1, upsample: str = "bilinear"):
        super().__init__()
        if upsample not in HEAD_UPSAMPLING:
            raise ValueError(f"head upsample must be one of {HEAD_UPSAMPLING}, got {upsample!r}")
        self.upsample = upsample
        self.scale = scale if upsample == "pixel_shuffle" else 1
        self.conv = nn.Conv2d(in_channels, out_channels * self.scale ** 2, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.conv(x)
        if self.scale > 1:
            x = F.pixel_shuffle(x, self.scale)
        if x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


DECODERS = {"fpn": FPNDecoder, "swin_unet": SwinUNetDecoder}
