"""Real-dataset loaders on tiny datasets written (tests/real_data.py) in the exact published layouts and encodings."""

import random

import numpy as np
import pytest
import torch

from tests.real_data import H, W, write_cityscapes, write_nyud, write_synthia, write_taskonomy
from vtagml.data import Cityscapes, FolderDataModule, NYUDv2, Synthia, Taskonomy, collate_multitask
from vtagml.data.check import check
from vtagml.data.transforms import JointTransform
from vtagml.tasks import build_task

# ------------------------------------------------------------------ NYUD-v2


@pytest.fixture
def nyud(tmp_path):
    return write_nyud(tmp_path / "NYUD_MT")


def test_nyud_decodes_published_values(nyud):
    ds = NYUDv2(nyud, split="train")
    assert len(ds) == 2 and len(NYUDv2(nyud, split="val")) == 1  # split files honoured
    s = ds[0]
    assert s["image"].shape == (3, H, W) and s["image"].max() <= 1
    assert s["semseg"].dtype == torch.int64
    assert s["semseg"][0, 0] == 255 and s["semseg"][0, 1] == 0 and s["semseg"][1, 0] == 39 and s["semseg"][3, 3] == 4
    assert s["depth"].shape == (1, H, W) and s["depth"][0, 0, 0] == 2.5 and s["depth"][0, 2, 3] == 0
    torch.testing.assert_close(s["normals"][:, 3, 3], torch.tensor([0.6, 0.0, -0.8]))
    torch.testing.assert_close(s["normals"][:, 0, 0], torch.tensor([0.5, 0.5, -0.8]) / np.sqrt(0.25 + 0.25 + 0.64))
    assert torch.equal(s["normals"][:, 5, 7], torch.zeros(3))
    assert s["edges"][0, :, 4].eq(1).all() and s["edges"].sum() == H
    assert ds.num_classes == 40


def test_nyud_errors_name_the_file_or_task(nyud):
    with pytest.raises(ValueError, match="curvature"):
        NYUDv2(nyud, tasks=["depth", "curvature"])
    with pytest.raises(FileNotFoundError, match="test.txt"):
        NYUDv2(nyud, split="test")
    (nyud / "depth" / "0002.npy").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="0002.npy"):
        NYUDv2(nyud, tasks=["depth"])[1]
    (nyud / "edge" / "0001.npy").unlink()
    with pytest.raises(FileNotFoundError, match="0001.npy"):
        NYUDv2(nyud, tasks=["edges"])[0]
    np.save(nyud / "normals" / "0003.npy", np.zeros((H + 1, W, 3), np.float32))
    with pytest.raises(ValueError, match="0003.npy"):
        NYUDv2(nyud, split="val", tasks=["normals"])[0]


def test_flip_augmentation_keeps_normals_consistent(nyud):
    flips = {t: build_task(t).hflip for t in ("normals", "depth")}
    flip = JointTransform(hflip=True, flips=flips)
    s = NYUDv2(nyud, split="train", tasks=["normals", "depth"]).load(0)
    torch.manual_seed(0)
    for _ in range(20):  # p = 0.5 per call: both outcomes occur
        out = flip(s)
        if not torch.equal(out["image"], s["image"]):
            break
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["normals"][0], -s["normals"][0].flip(-1))  # x negated
    assert torch.equal(out["normals"][1:], s["normals"][1:].flip(-1))
    assert torch.equal(out["depth"], s["depth"].flip(-1))


def test_scale_and_crop_keep_labels_exact(nyud):
    s = NYUDv2(nyud, split="train", tasks=["semseg", "depth"]).load(0)
    out = JointTransform(crop_size=(8, 10), scale_range=(2.0, 2.0))(s)
    assert out["image"].shape == (3, 8, 10) and out["semseg"].shape == (8, 10) and out["depth"].shape == (1, 8, 10)
    assert set(torch.unique(out["semseg"]).tolist()) <= {255, 0, 39, 4}  # nearest: ids stay ids
    assert set(torch.unique(out["depth"]).tolist()) <= {0.0, 1.25}  # nearest; zoomed in 2x: depth / 2
    padded = JointTransform(crop_size=(H + 2, W + 2))(s)
    assert (padded["semseg"][H:] == 255).all() and (padded["depth"][:, H:] == 0).all()


def test_data_check_reports_and_fails_on_problems(nyud, capsys):
    assert check("nyudv2", str(nyud), ["train", "val"]) == 0
    out = capsys.readouterr().out
    assert "[train] 2 samples" in out and "depth" in out and "[2.5, 2.5]" in out and out.strip().endswith("OK")
    (nyud / "segmentation" / "0003.png").unlink()
    assert check("nyudv2", str(nyud), ["val"]) == 1
    assert "0003.png" in capsys.readouterr().out


# ------------------------------------------------------------------ Taskonomy


@pytest.fixture
def taskonomy(tmp_path):
    return write_taskonomy(tmp_path / "taskonomy")


def test_taskonomy_decodes_published_values(taskonomy):
    ds = Taskonomy(taskonomy, split="train", split_csv=taskonomy / "splits.csv",
                   tasks=["depth", "normals", "semseg", "edges"])
    assert len(ds) == 2
    s = ds[0]
    assert s["depth"][0, 1, 1].item() == 2.5 and s["depth"][0, 0, 0].item() == 0.0  # 1280 / 512; 65535 invalid
    n = s["normals"][:, 2, 2]
    torch.testing.assert_close(n, torch.nn.functional.normalize(torch.tensor([1.0, -1 / 255, -1 / 255]), dim=0))
    assert torch.equal(s["normals"][:, 0, 0], torch.zeros(3))  # invalid where depth is invalid
    assert s["semseg"][1, 1] == 255 and s["semseg"][1, 2] == 0 and s["semseg"][0, 0] == 2
    assert s["edges"][0, 2, 0] == 1.0 and s["edges"][0, 3, 0].item() == pytest.approx(32768 / 65535)
    assert ds.num_classes == 17


def test_taskonomy_missing_modality_is_absent_not_an_error(taskonomy):
    ds = Taskonomy(taskonomy, split="val", split_csv=taskonomy / "splits.csv", tasks=["depth", "edges"])
    s = ds[0]
    assert "depth" in s and "edges" not in s
    batch = collate_multitask([Taskonomy(taskonomy, buildings=["allensville"], tasks=["depth", "edges"])[0], s])
    assert batch["present"]["edges"].tolist() == [True, False]
    assert len(Taskonomy(taskonomy, tasks=["depth"])) == 3  # every building of rgb/
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Taskonomy(taskonomy, buildings=["nowhere"])
    with pytest.raises(ValueError, match="'holdout'"):
        Taskonomy(taskonomy, split="holdout", split_csv=taskonomy / "splits.csv")


# ------------------------------------------------------------------ Cityscapes and SYNTHIA


@pytest.fixture
def cityscapes(tmp_path):
    return write_cityscapes(tmp_path / "cityscapes")


def test_cityscapes_train_ids_and_depth_from_disparity(cityscapes):
    s = Cityscapes(cityscapes, split="train")[0]
    assert s["semseg"][0, :5].tolist() == [0, 13, 255, 18, 255]
    assert s["depth"][0, 0, 0] == 0 and s["depth"][0, 0, 1] == 0
    assert s["depth"][0, 3, 3].item() == pytest.approx(0.2 * 2000.0 / 1.0)
    s16 = Cityscapes(cityscapes, split="train", num_classes=16)[0]
    assert s16["semseg"][0, :5].tolist() == [0, 12, 255, 15, 255]  # 16 classes: no terrain, truck, train


def test_synthia_maps_to_cityscapes_classes(tmp_path):
    root = write_synthia(tmp_path / "RAND_CITYSCAPES")
    ds = Synthia(root, split="all")
    s = ds[0]
    assert s["semseg"][0, :4].tolist() == [0, 12, 255, 9]  # 16-class compact ids
    assert Synthia(root, split="all", num_classes=19)[0]["semseg"][0, :4].tolist() == [0, 13, 255, 10]
    assert s["depth"][0, 0, 0].item() == pytest.approx(2.5)
    assert len(Synthia(root, split="train", holdout=3)) == 2 and len(Synthia(root, split="val", holdout=3)) == 1


def test_folder_datamodule_trains_batches(nyud):
    dm = FolderDataModule("nyudv2", str(nyud), tasks=["semseg", "depth", "normals", "edges"], crop_size=(4, 6),
                          batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 4, 6) and batch["normals"].shape == (2, 3, 4, 6)
    assert dm.num_classes == 40 and batch["present"]["semseg"].all()
    with pytest.raises(ValueError, match="reshading"):
        FolderDataModule("nyudv2", str(nyud), tasks=["reshading"])


def test_transforms_keep_synthetic_geometry_consistent():
    """After scale, crop and flip, the transformed intrinsics still satisfy the renderer's
    identity depth_zbuffer = depth / |K^-1 [u + 0.5, v + 0.5, 1]| at every pixel."""
    from vtagml.data import SyntheticScenes
    s = SyntheticScenes("val", size=(48, 64), num_samples=1, tasks=["depth", "depth_zbuffer", "normals"])[0]
    flips = {t: build_task(t).hflip for t in ("depth", "depth_zbuffer", "normals")}
    random.seed(3)
    out = JointTransform(crop_size=(40, 50), scale_range=(1.5, 1.5), hflip=True, flips=flips)(s)
    k = out["intrinsics"].double()
    h, w = out["depth"].shape[-2:]
    u = (torch.arange(w, dtype=torch.float64) + 0.5 - k[0, 2]) / k[0, 0]
    v = (torch.arange(h, dtype=torch.float64) + 0.5 - k[1, 2]) / k[1, 1]
    norm = torch.sqrt(u[None, :] ** 2 + v[:, None] ** 2 + 1)
    expected = out["depth"][0].double() / norm
    # nearest resampling picks source pixels whose rays differ by up to half a source pixel
    assert ((out["depth_zbuffer"][0].double() - expected).abs() / expected).median() < 2e-3
