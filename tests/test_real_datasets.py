"""Real-dataset loaders on tiny datasets written here in the exact published layouts and encodings."""

import json
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vtagml.data import Cityscapes, FolderDataModule, NYUDv2, Synthia, Taskonomy, collate_multitask
from vtagml.data.check import check
from vtagml.data.transforms import JointTransform
from vtagml.tasks import build_task

H, W = 6, 8


def rgb(path, seed=0, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def png(path, arr):
    """8-bit (uint8) or 16-bit grayscale (uint16) PNG through Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def png16_rgb(path, arr):
    """A 16-bit RGB PNG written by hand (Pillow cannot), so the reader is checked independently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ------------------------------------------------------------------ NYUD-v2


@pytest.fixture
def nyud(tmp_path):
    root = tmp_path / "NYUD_MT"
    for i, name in enumerate(["0001", "0002", "0003"]):
        rgb(root / "images" / f"{name}.jpg", i)
        seg = np.full((H, W), 5, np.uint8)
        seg[0, 0], seg[0, 1], seg[1, 0] = 0, 1, 40
        png(root / "segmentation" / f"{name}.png", seg)
        depth = np.full((H, W), 2.5, np.float32)
        depth[2, 3] = 0
        (root / "depth").mkdir(exist_ok=True)
        np.save(root / "depth" / f"{name}.npy", depth)
        normals = np.zeros((H, W, 3), np.float32)
        normals[..., 0], normals[..., 2] = 0.6, -0.8
        normals[0, 0] = (0.5, 0.5, -0.8)  # not unit: must be normalized
        normals[5, 7] = 0  # invalid
        (root / "normals").mkdir(exist_ok=True)
        np.save(root / "normals" / f"{name}.npy", normals)
        edge = np.zeros((H, W), np.float32)
        edge[:, 4] = 1
        (root / "edge").mkdir(exist_ok=True)
        np.save(root / "edge" / f"{name}.npy", edge)
    (root / "gt_sets").mkdir()
    (root / "gt_sets" / "train.txt").write_text("0001\n0002\n")
    (root / "gt_sets" / "val.txt").write_text("0003\n")
    return root


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
    root = tmp_path / "taskonomy"
    for b, views in (("allensville", 2), ("beechwood", 1)):
        for v in range(views):
            stem = f"point_{v}_view_0_domain_"
            rgb(root / "rgb" / b / f"{stem}rgb.png", v)
            depth = np.full((H, W), 1280, np.uint16)  # 2.5 m
            depth[0, 0] = 65535
            png(root / "depth_euclidean" / b / f"{stem}depth_euclidean.png", depth)
            normal = np.full((H, W, 3), 127, np.uint8)
            normal[..., 0] = 255
            png(root / "normal" / b / f"{stem}normal.png", normal)
            seg = np.full((H, W), 3, np.uint8)
            seg[1, 1], seg[1, 2] = 0, 1
            png(root / "segment_semantic" / b / f"{stem}segmentsemantic.png", seg)
            if b == "allensville":  # beechwood lacks texture edges
                edges = np.zeros((H, W), np.uint16)
                edges[2, :] = 65535
                edges[3, :] = 32768
                png(root / "edge_texture" / b / f"{stem}edge_texture.png", edges)
    (root / "splits.csv").write_text("id,train,val,test\nallensville,1,0,0\nbeechwood,0,1,0\n")
    return root


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
    root = tmp_path / "cityscapes"
    stem = "aachen_000000_000019"
    rgb(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png")
    ids = np.zeros((H, W), np.uint8)
    ids[0, :5] = [7, 26, 0, 33, 9]  # road, car, unlabeled, bicycle, parking
    png(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", ids)
    disp = np.full((H, W), 257, np.uint16)  # (257 - 1) / 256 = 1 pixel
    disp[0, 0] = 0
    disp[0, 1] = 1  # disparity exactly 0: invalid too
    png(root / "disparity" / "train" / "aachen" / f"{stem}_disparity.png", disp)
    (root / "camera" / "train" / "aachen").mkdir(parents=True)
    (root / "camera" / "train" / "aachen" / f"{stem}_camera.json").write_text(
        json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 2000.0, "fy": 2000.0}}))
    return root


def test_cityscapes_train_ids_and_depth_from_disparity(cityscapes):
    s = Cityscapes(cityscapes, split="train")[0]
    assert s["semseg"][0, :5].tolist() == [0, 13, 255, 18, 255]
    assert s["depth"][0, 0, 0] == 0 and s["depth"][0, 0, 1] == 0
    assert s["depth"][0, 3, 3].item() == pytest.approx(0.2 * 2000.0 / 1.0)
    s16 = Cityscapes(cityscapes, split="train", num_classes=16)[0]
    assert s16["semseg"][0, :5].tolist() == [0, 12, 255, 15, 255]  # 16 classes: no terrain, truck, train


def test_synthia_maps_to_cityscapes_classes(tmp_path):
    root = tmp_path / "RAND_CITYSCAPES"
    for i in range(3):
        name = f"{i:07d}.png"
        rgb(root / "RGB" / name, i)
        labels = np.zeros((H, W, 3), np.uint16)
        labels[0, :4, 0] = [3, 8, 13, 1]  # road, car, (not shared), sky
        labels[..., 1] = 300 + i  # instance ids live in the other channel
        png16_rgb(root / "GT" / "LABELS" / name, labels)
        depth = np.full((H, W), 250, np.uint16)
        png(root / "Depth" / "Depth" / name, depth)
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
