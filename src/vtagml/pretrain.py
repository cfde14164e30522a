"""Pretrain the demo's small Swin backbone (stands in for ImageNet pretraining on CPU).

Recipe (fixed seed, reproducible): SimMIM-style masked image modelling plus object-category
classification of object boxes, on synthetic scenes that the demo never sees:

- data: ``SyntheticScenes(split="pretrain", domain="c")`` (its own seed stream and a third
  appearance domain), with random flips and colour jitter;
- masked image modelling: 50% of 8x8-pixel patches are replaced by a learned mask token after
  the patch embedding; a linear layer on the last stage reconstructs the pixels; L1 loss on
  masked pixels (Xie et al., SimMIM, 2022);
- object categories, in the same forward pass: features of stages 2-4 are RoI-aligned in the
  tight box of every visible object (from the renderer's instance ids, like a detection
  dataset's ground-truth boxes) and a linear layer says box, sphere or cylinder
  (cross-entropy), as in detection pretraining.

No depth, normals, edges or per-pixel semantic label is used (object boxes and their kind
only). Only the backbone's weights are saved (safetensors, float16), under timm's own key
names, so they load through the same ``checkpoint_path`` as any user's timm checkpoint.

Usage: ``vtagml pretrain [--out demo_swin.safetensors]`` (or ``python scripts/pretrain_backbone.py``)
writes to the current folder (never into the installed package); ``vtagml demo --weights FILE``
uses the result. In a checkout, ``--out src/vtagml/weights/demo_swin.safetensors`` replaces the
shipped weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import numpy as np
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import nn
from torchvision.ops import roi_align

from vtagml.data.io import atomic_write
from vtagml.data.synthetic import FIRST_OBJECT_INSTANCE, SEMSEG_CLASSES, render_scene
from vtagml.models.backbone import create_backbone

#: The demo backbone: a small timm Swin (1.7 M parameters; 3.5 MB in float16).
DEMO_BACKBONE = dict(
    name="swin_tiny_patch4_window7_224",
    img_size=64,
    kwargs=dict(embed_dim=24, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), window_size=4),
)
OBJECT_CLASSES = [SEMSEG_CLASSES.index(c) for c in ("box", "sphere", "cylinder")]


def demo_weights_path() -> Path:
    """The shipped demo backbone (``vtagml://weights/demo_swin.safetensors`` in a config)."""
    return Path(__file__).parent / "weights" / "demo_swin.safetensors"


def _render_pool(num: int, size: int, seed: int,
                 min_pixels: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pretraining images (num, 3, S, S) uint8 and their object boxes.

    Returns ``images``, ``boxes`` (K, 5) float ``[image index, x1, y1, x2, y2]`` in pixels (the
    tight box of every object instance with at least ``min_pixels`` visible pixels) and
    ``kinds`` (K,) long: 0 box, 1 sphere, 2 cylinder.
    """
    images = torch.empty(num, 3, size, size, dtype=torch.uint8)
    boxes, kinds = [], []
    for i in range(num):
        s = render_scene(seed, "pretrain", i, "c", size)
        images[i] = torch.from_numpy(s["image"]).permute(2, 0, 1)
        instance = s["instance"]
        for inst in np.unique(instance[instance >= FIRST_OBJECT_INSTANCE]):
            rows, cols = np.nonzero(instance == inst)
            if rows.size < min_pixels:
                continue
            boxes.append([i, cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
            kinds.append(OBJECT_CLASSES.index(int(s["semseg"][rows[0], cols[0]])))
    return images, torch.tensor(boxes, dtype=torch.float32).view(-1, 5), torch.tensor(kinds, dtype=torch.long)


class SimMIM(nn.Module):
    """Backbone + mask token + pixel decoder + object-category head on RoI-pooled features."""

    def __init__(self, backbone: nn.Module, mask_patch: int = 8):
        super().__init__()
        self.backbone = backbone
        self.mask_patch = mask_patch
        c0 = backbone.feature_info[0]["num_chs"]
        c_last = backbone.feature_info[-1]["num_chs"]
        self.stride = backbone.feature_info[-1]["reduction"]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, c0))
        self.decoder = nn.Linear(c_last, self.stride * self.stride * 3)
        self.roi_levels = (1, 2, 3)  # stages whose features classify the objects
        self.classifier = nn.Linear(sum(backbone.feature_info[k]["num_chs"] for k in self.roi_levels),
                                    len(OBJECT_CLASSES))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) normalized; mask (B, H/p, W/p) bool; boxes (K, 5) -> (reconstruction, logits (K, 3))."""
        tokens = self.backbone.patch_embed(x)  # (B, H/4, W/4, C)
        scale = self.mask_patch // (x.shape[-1] // tokens.shape[2])
        m = mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(-1).to(tokens)
        feat = tokens * (1 - m) + self.mask_token * m
        pooled = []
        for k, stage in enumerate(self.backbone.layers):
            feat = stage(feat)  # (B, h, w, C)
            if k in self.roi_levels:
                spatial = 1.0 / self.backbone.feature_info[k]["reduction"]
                roi = roi_align(feat.permute(0, 3, 1, 2), boxes, 2, spatial_scale=spatial, aligned=True)
                pooled.append(roi.mean(dim=(2, 3)))
        b, h, w, _ = feat.shape
        rec = self.decoder(feat).view(b, h, w, self.stride, self.stride, 3)
        rec = rec.permute(0, 5, 1, 3, 2, 4).reshape(b, 3, h * self.stride, w * self.stride)
        return rec, self.classifier(torch.cat(pooled, dim=1))


def _batch_boxes(boxes: torch.Tensor, idx: torch.Tensor, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes of images ``idx``, re-indexed to their position in the batch, and which rows they are."""
    position = torch.full((num_images,), -1, dtype=torch.long)
    position[idx] = torch.arange(len(idx))
    owner = position[boxes[:, 0].long()]
    rows = owner >= 0
    picked = boxes[rows].clone()
    picked[:, 0] = owner[rows].to(picked)
    return picked, rows


def _augment(images: torch.Tensor, boxes: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips (boxes follow) and colour jitter."""
    x = images.float() / 255.0
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x[flip] = x[flip].flip(-1)
    flipped = flip[boxes[:, 0].long()]
    width = x.shape[-1]
    boxes = boxes.clone()
    boxes[flipped, 1], boxes[flipped, 3] = width - boxes[flipped, 3], width - boxes[flipped, 1]
    gain = 0.7 + 0.6 * torch.rand(x.shape[0], 3, 1, 1, generator=g)
    bias = 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5)
    return (x * gain + bias).clamp(0, 1), boxes


def pretrain(out: Path, num_images: int = 6000, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3,
             seed: int = 0, log_every: int = 50) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    size = DEMO_BACKBONE["img_size"]
    images, boxes, kinds = _render_pool(num_images, size, seed)
    print(f"rendered {num_images} pretraining images with {len(kinds)} objects in {time.time() - start:.0f}s",
          flush=True)
    backbone = create_backbone(DEMO_BACKBONE["name"], size, **DEMO_BACKBONE["kwargs"])
    model = SimMIM(backbone)
    cfg = resolve_model_data_config(backbone)  # the normalization the model uses too
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    steps_per_epoch = num_images // batch_size
    total = epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    grid = size // model.mask_patch
    step, history = 0, []
    for epoch in range(epochs):
        order = torch.randperm(num_images, generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            in_batch, rows = _batch_boxes(boxes, idx, num_images)
            x, rois = _augment(images[idx], in_batch, g)
            mask = torch.rand(len(idx), grid, grid, generator=g) < 0.5
            rec, logits = model((x - mean) / std, mask, rois)
            pix = mask.repeat_interleave(model.mask_patch, 1).repeat_interleave(model.mask_patch, 2).unsqueeze(1)
            mim = ((rec - (x - mean) / std).abs() * pix).sum() / (pix.sum() * 3).clamp_min(1)
            cls = F.cross_entropy(logits, kinds[rows])
            loss = mim + 0.5 * cls
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
            sched.step()
            step += 1
            if step % log_every == 0 or step == total:
                history.append(dict(step=step, mim=round(mim.item(), 4), cls=round(cls.item(), 4)))
                print(f"epoch {epoch + 1}/{epochs} step {step}/{total} mim {mim.item():.4f} "
                      f"cls {cls.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    from safetensors.torch import save_file
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    metadata = {"recipe": "simmim+object-box-classification", "seed": str(seed),
                "architecture": json.dumps(DEMO_BACKBONE)}
    atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    info = dict(seconds=round(time.time() - start), steps=total, final=history[-1] if history else None,
                num_params=sum(v.numel() for v in state.values()), bytes=out.stat().st_size)
    print(json.dumps(info), flush=True)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vtagml pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_swin.safetensors"),
                        help="output file (default: demo_swin.safetensors in the current folder)")
    parser.add_argument("--num-images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pretrain(args.out, args.num_images, args.epochs, args.batch_size, args.lr, args.seed)


if __name__ == "__main__":
    main()
