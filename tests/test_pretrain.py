"""Backbone pretraining data: object boxes and their kinds, batching and flips."""

import numpy as np
import torch

from vtagml.data import render_scene
from vtagml.data.synthetic import FIRST_OBJECT_INSTANCE
from vtagml.pretrain import OBJECT_CLASSES, _augment, _batch_boxes, _render_pool


def test_object_boxes_are_tight_and_labelled_with_the_object_kind():
    images, boxes, kinds = _render_pool(6, 64, seed=0, min_pixels=12)
    assert len(boxes) == len(kinds) > 0
    for i in range(6):
        s = render_scene(0, "pretrain", i, "c", 64)
        assert torch.equal(images[i], torch.from_numpy(s["image"]).permute(2, 0, 1))
        expected = set()
        for inst in np.unique(s["instance"][s["instance"] >= FIRST_OBJECT_INSTANCE]):
            rows, cols = np.nonzero(s["instance"] == inst)
            if rows.size >= 12:
                (cls,) = set(s["semseg"][rows, cols].tolist())
                expected.add((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1, OBJECT_CLASSES.index(cls)))
        got = {(*map(int, b[1:].tolist()), int(k)) for b, k in zip(boxes, kinds) if b[0] == i}
        assert got == expected


def test_batch_boxes_follow_images_and_flips():
    images = torch.randint(0, 256, (4, 3, 8, 10), dtype=torch.uint8)
    boxes = torch.tensor([[0, 1, 1, 3, 4], [2, 0, 2, 7, 8], [2, 5, 0, 10, 3], [3, 2, 2, 4, 4]], dtype=torch.float32)
    idx = torch.tensor([2, 0])
    picked, rows = _batch_boxes(boxes, idx, num_images=4)
    assert rows.tolist() == [True, True, True, False]
    assert picked[:, 0].tolist() == [1, 0, 0]  # image 0 is second in the batch, image 2 first
    g = torch.Generator().manual_seed(0)
    x, flipped_boxes = _augment(images[idx], picked, g)
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(2, generator=g) < 0.5
    for (b, x1, y1, x2, y2), (_, fx1, fy1, fx2, fy2) in zip(picked.tolist(), flipped_boxes.tolist()):
        assert (fy1, fy2) == (y1, y2)
        assert (fx1, fx2) == ((10 - x2, 10 - x1) if flip[int(b)] else (x1, x2))
