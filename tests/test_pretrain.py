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


def _demo_backbone(**kw):
    from vtagml.models.backbone import create_backbone
    from vtagml.pretrain import DEMO_BACKBONE, demo_weights_path
    return create_backbone(DEMO_BACKBONE["name"], DEMO_BACKBONE["img_size"], checkpoint_path=demo_weights_path(),
                           **DEMO_BACKBONE["kwargs"], **kw)


def _assert_holds_the_shipped_weights(model):
    from safetensors.torch import load_file
    from vtagml.pretrain import demo_weights_path
    shipped = load_file(str(demo_weights_path()))
    own = model.state_dict()
    assert set(shipped) <= set(own)
    for key, value in shipped.items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key


def test_shipped_demo_weights_load_exactly():
    """Every tensor of the shipped backbone lands under its own name (on every timm the pins admit:
    CI runs this with the lowest one too)."""
    _assert_holds_the_shipped_weights(_demo_backbone())


def test_timm_layout_checkpoint_survives_an_old_timm_filter(monkeypatch):
    """timm <= 1.0.30 takes any checkpoint without ``head.fc.weight`` (a headless one, like the demo
    weights) for the original Swin layout and shifts every ``layers.i.downsample`` to ``i + 1``; the
    weights are in timm's layout already, so that shift must not happen."""
    import re

    import timm.models.swin_transformer as swin

    newer = swin.checkpoint_filter_fn

    def filter_of_timm_1_0_29(state_dict, model):
        if "head.fc.weight" not in state_dict:  # timm 1.0.9 to 1.0.30: "old weights"
            state_dict = {re.sub(r"layers.(\d+).downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample",
                                 k).replace("head.", "head.fc."): v for k, v in state_dict.items()}
        return newer(state_dict, model)

    monkeypatch.setattr(swin, "checkpoint_filter_fn", filter_of_timm_1_0_29)
    _assert_holds_the_shipped_weights(_demo_backbone())


def test_original_swin_layout_is_still_converted(tmp_path):
    """A checkpoint in the original Swin repository's layout (patch merging at the end of a stage,
    ``head.weight``) still goes through timm's conversion."""
    import re

    from safetensors.torch import load_file, save_file
    from vtagml.pretrain import demo_weights_path

    shipped = load_file(str(demo_weights_path()))
    original = {re.sub(r"layers.(\d+).downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
                for k, v in shipped.items()}
    assert "layers.0.downsample.reduction.weight" in original
    original["head.weight"] = torch.zeros(1000, shipped["norm.weight"].shape[0], dtype=torch.float16)
    path = tmp_path / "original_layout.safetensors"
    save_file(original, str(path))
    from vtagml.models.backbone import create_backbone
    from vtagml.pretrain import DEMO_BACKBONE
    model = create_backbone(DEMO_BACKBONE["name"], DEMO_BACKBONE["img_size"], checkpoint_path=path,
                            **DEMO_BACKBONE["kwargs"])
    _assert_holds_the_shipped_weights(model)


def test_pretrain_writes_to_the_current_folder_by_default(monkeypatch):
    """``vtagml pretrain`` never overwrites the weights inside the installed package."""
    from pathlib import Path

    import vtagml.pretrain as pretrain

    calls = []
    monkeypatch.setattr(pretrain, "pretrain", lambda out, *args: calls.append(out))
    pretrain.main([])
    pretrain.main(["--out", "w.safetensors"])
    assert calls == [Path("demo_swin.safetensors"), Path("w.safetensors")]
