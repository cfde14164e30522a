"""Bad files and unusual inputs end in a clear error naming the file, or in the right result
(issue 15: predict outputs, the image reader, ``vtagml data check``, seeded augmentation;
issue 14: scale augmentation divides depth by the zoom)."""

import random

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_SWIN
from tests.real_data import H, W, png
from tests.test_real_datasets import cityscapes, nyud, taskonomy  # noqa: F401  (fixtures)
from vtagml import VTAGML
from vtagml.data import Cityscapes, FolderDataModule, NYUDv2, SyntheticDataModule, Taskonomy
from vtagml.data.check import check, main as check_main
from vtagml.data.image_folder import ImageFolder
from vtagml.data.io import atomic_write, read_rgb
from vtagml.data.transforms import JointTransform
from vtagml.engine.artifacts import PredictionWriter
from vtagml.engine.module import MultitaskModule

TASKS = ("semseg", "depth")


# ------------------------------------------------------------------ predict


def _image(path, seed, size=(40, 48)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _predict(tmp_path, images):
    torch.manual_seed(0)
    net = VTAGML(TINY_SWIN["name"], tasks=TASKS, num_classes=6, img_size=64, backbone_kwargs=TINY_SWIN["kwargs"],
                 adapt_last_k=2, embed_dim=8, decoder_channels=16)
    out = tmp_path / "out"
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[PredictionWriter(out)])
    trainer.predict(MultitaskModule(net), datamodule=SyntheticDataModule(tasks=TASKS, predict_dir=str(images)),
                    return_predictions=False)
    return out


def test_predict_keeps_images_that_share_a_stem(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.jpg", 0, (40, 48))
    _image(images / "a.png", 1, (32, 56))
    _image(images / "b.png", 2)
    assert ImageFolder(images).names == ["a.jpg", "a.png", "b"]  # stem unless shared: stable, unique
    out = _predict(tmp_path, images)
    assert np.load(out / "a.jpg" / "semseg.npy").shape == (40, 48)
    assert np.load(out / "a.png" / "semseg.npy").shape == (32, 56)
    assert (out / "b" / "depth.png").is_file() and not (out / "a").exists()


def test_predict_skips_an_unreadable_image_and_records_it(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.png", 0)
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    _image(images / "c.png", 2)
    with pytest.warns(UserWarning, match="b.jpg"):
        out = _predict(tmp_path, images)
    for name in ("a", "c"):  # images after the bad one are predicted too
        assert (out / name / "semseg.npy").is_file() and (out / name / "depth.png").is_file()
    assert not (out / "b").exists()
    failed = (out / "failed.txt").read_text()
    assert "b.jpg" in failed and "a.png" not in failed and "c.png" not in failed
    _image(images / "b.jpg", 1)  # fixed: a rerun predicts it and drops the stale list
    _predict(tmp_path, images)
    assert (out / "b" / "semseg.npy").is_file() and not (out / "failed.txt").exists()


def test_prediction_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous file intact and no temporary file."""

    class Net:
        tasks = [type("T", (), {"name": "depth", "colorize": staticmethod(lambda a: np.zeros((2, 3, 3), np.uint8))})]

    module = type("M", (), {"net": Net()})()
    writer = PredictionWriter(tmp_path)
    pred = {"name": ["x"], "labels": {"depth": torch.ones(1, 1, 2, 3)}}
    writer.write_on_batch_end(None, module, pred, None, {}, 0)
    before = (tmp_path / "x" / "depth.npy").read_bytes()

    def dying_save(file, arr, *a, **k):
        with open(file, "wb") as f:
            f.write(b"\x93NUMPY truncated")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        writer.write_on_batch_end(None, module, {"name": ["x"], "labels": {"depth": torch.zeros(1, 1, 2, 3)}},
                                  None, {}, 0)
    assert (tmp_path / "x" / "depth.npy").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["depth.npy", "depth.png"]


def test_atomic_write_cleans_up_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write(path, lambda tmp: tmp.write_text("old"))

    def half_written(tmp):
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_written)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ------------------------------------------------------------------ the image reader


def test_read_rgb_keeps_16_bit_grayscale_range(tmp_path):
    v = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(v).save(tmp_path / "g16.png")
    img = read_rgb(tmp_path / "g16.png")
    assert img.shape == (3, 1, 4)
    torch.testing.assert_close(img, torch.from_numpy(v / 65535.0).float().expand(3, 1, 4))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I"])
def test_read_rgb_modes(tmp_path, mode):
    rgb = np.array([[[255, 0, 0], [0, 128, 255], [10, 20, 30]]], np.uint8)
    gray = np.array([[0, 128, 255]], np.uint8)
    if mode == "L":
        img, expected = Image.fromarray(gray), np.repeat(gray[..., None], 3, -1)
    elif mode == "P":
        img, expected = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=3), rgb
    elif mode == "RGBA":  # alpha is dropped, colours kept
        img, expected = Image.fromarray(np.dstack([rgb, [[0, 128, 255]]]).astype(np.uint8), "RGBA"), rgb
    elif mode == "LA":
        img, expected = Image.fromarray(np.dstack([gray, gray]), "LA"), np.repeat(gray[..., None], 3, -1)
    else:  # 32-bit integer mode holding 16-bit values (a TIFF; older Pillow opens 16-bit PNGs so)
        img, expected = Image.fromarray(gray.astype(np.int32) * 257), np.repeat(gray[..., None], 3, -1)
    path = tmp_path / ("x.tif" if mode == "I" else "x.png")
    img.save(path)
    out = read_rgb(path)
    torch.testing.assert_close(out, torch.from_numpy(expected / 255.0).permute(2, 0, 1).float(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ vtagml data check and the loaders


def _fails(capsys, dataset, root, split, needle, tasks=None):
    assert check(dataset, str(root), [split], tasks) == 1
    out = capsys.readouterr().out
    assert needle in out and "ERROR" in out and not out.strip().endswith("OK"), out
    return out


def test_check_fails_on_a_class_value_outside_the_dataset(nyud, capsys):
    seg = np.full((H, W), 5, np.uint8)
    seg[2, 2] = 255  # NYUD: 0 = unlabeled, 1..40 classes; 255 is not a legal value
    png(nyud / "segmentation" / "0002.png", seg)
    _fails(capsys, "nyudv2", nyud, "train", "0002.png")
    with pytest.raises(ValueError, match="0002.png"):  # training fails naming the file, not in the loss
        NYUDv2(nyud, split="train", tasks=["semseg"])[1]
    png(nyud / "segmentation" / "0002.png", np.full((H, W), 40, np.uint8))  # 40 is the last legal value
    assert check("nyudv2", str(nyud), ["train"], ["semseg"]) == 0


def test_check_fails_on_taskonomy_and_cityscapes_ids_outside_their_tables(taskonomy, cityscapes, capsys):
    stem = "point_0_view_0_domain_"
    png(taskonomy / "segment_semantic" / "beechwood" / f"{stem}segmentsemantic.png", np.full((H, W), 255, np.uint8))
    assert check("taskonomy", str(taskonomy), ["val"], ["semseg"],
                 dataset_kwargs={"split_csv": str(taskonomy / "splits.csv")}) == 1
    assert "segmentsemantic.png" in capsys.readouterr().out
    with pytest.raises(ValueError, match="segmentsemantic.png"):
        Taskonomy(taskonomy, buildings=["beechwood"], tasks=["semseg"])[0]
    ids = np.full((H, W), 7, np.uint8)
    ids[0, 0] = 200
    png(cityscapes / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", ids)
    _fails(capsys, "cityscapes", cityscapes, "train", "labelIds.png", ["semseg"])
    ids[0, 0] = 255  # -1 (license plate) is stored as 255: legal, ignored
    png(cityscapes / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", ids)
    assert Cityscapes(cityscapes, tasks=["semseg"])[0]["semseg"][0, 0] == 255


@pytest.mark.parametrize("bad", ["inf", "nan", "shape_hw2", "millimetres", "one_d", "negative"])
def test_check_fails_on_bad_depth(nyud, capsys, bad):
    depth = np.full((H, W), 2.5, np.float32)
    if bad == "inf":
        depth[1, 1] = np.inf
    elif bad == "nan":
        depth[1, 1] = np.nan
    elif bad == "shape_hw2":
        depth = np.stack([depth, depth], -1)
    elif bad == "millimetres":
        depth = np.full((H, W), 2500, np.uint16)
    elif bad == "one_d":
        depth = depth.ravel()
    else:
        depth[1, 1] = -1.0
    np.save(nyud / "depth" / "0003.npy", depth)
    out = _fails(capsys, "nyudv2", nyud, "val", "0003.npy")
    if bad == "millimetres":
        assert "metres" in out
    with pytest.raises(ValueError, match="0003.npy"):
        NYUDv2(nyud, split="val", tasks=["depth"])[0]


@pytest.mark.parametrize("nan", ["all", "some"])
def test_check_fails_on_nan_edges(nyud, capsys, nan):
    edge = np.zeros((H, W), np.float32)
    edge[:, 4] = 1
    if nan == "all":
        edge[:] = np.nan
    else:
        edge[0, 0] = np.nan
    np.save(nyud / "edge" / "0001.npy", edge)
    _fails(capsys, "nyudv2", nyud, "train", "0001.npy", ["edges"])


def test_check_fails_on_a_1d_normals_array_naming_it(nyud, capsys):
    np.save(nyud / "normals" / "0003.npy", np.zeros(H * W * 3, np.float32))
    _fails(capsys, "nyudv2", nyud, "val", "0003.npy", ["normals"])


@pytest.mark.parametrize("limit", ["-1", "0", "x"])
def test_check_rejects_a_limit_that_checks_nothing(nyud, capsys, limit):
    with pytest.raises(SystemExit) as exc:
        check_main(["--dataset", "nyudv2", "--root", str(nyud), "--limit", limit])
    assert exc.value.code == 2 and "--limit" in capsys.readouterr().err
    with pytest.raises(ValueError, match="limit"):
        check("nyudv2", str(nyud), ["train"], limit=0)


def test_check_exit_code(nyud):
    with pytest.raises(SystemExit) as exc:
        check_main(["--dataset", "nyudv2", "--root", str(nyud), "--limit", "1"])
    assert exc.value.code == 0
    np.save(nyud / "depth" / "0001.npy", np.full((H, W), np.inf, np.float32))
    with pytest.raises(SystemExit) as exc:
        check_main(["--dataset", "nyudv2", "--root", str(nyud), "--splits", "train"])
    assert exc.value.code == 1


# ------------------------------------------------------------------ augmentation


def _augmenting_datamodule(root, num_workers=0):
    dm = FolderDataModule("nyudv2", str(root), tasks=["semseg", "depth", "normals"], crop_size=(4, 5),
                          scale_range=(0.8, 1.6), hflip=True, batch_size=1, num_workers=num_workers,
                          pin_memory=False, seed=7)
    dm.setup("fit")
    return dm


def test_augmentation_is_a_function_of_seed_epoch_and_index(nyud):
    loader = _augmenting_datamodule(nyud).train_dataloader()
    data = loader.dataset

    def draw(index, epoch):
        random.seed(epoch * 100 + index + 12345)  # Python's global RNG must not matter
        torch.manual_seed(epoch * 7 + 3)  # nor torch's
        return data[(index, epoch)]

    for index in (0, 1):
        a, b = draw(index, 3), draw(index, 3)
        for key in ("image", "semseg", "depth", "normals"):
            assert torch.equal(a[key], b[key]), key
    differs = [not torch.equal(draw(0, e)["image"], draw(0, 3)["image"]) for e in (4, 5, 6, 7)]
    assert sum(differs) >= 3  # another epoch, another augmentation


def test_augmentation_is_the_same_whatever_the_worker_count(nyud):
    def epoch_batches(num_workers, epoch):
        loader = _augmenting_datamodule(nyud, num_workers).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [b["image"] for b in loader]

    single = epoch_batches(0, 2)
    assert all(torch.equal(x, y) for x, y in zip(single, epoch_batches(2, 2)))
    assert not all(torch.equal(x, y) for x, y in zip(single, epoch_batches(0, 3)))


def test_scale_augmentation_divides_depth_by_the_zoom(nyud):
    s = NYUDv2(nyud, split="train", tasks=["depth"]).load(0)  # 2.5 m, one invalid pixel
    zoomed = JointTransform(scale_range=(2.0, 2.0), flips={})(s)
    assert set(torch.unique(zoomed["depth"]).tolist()) == {0.0, 1.25}  # zoom in 2x: twice as close
    shrunk = JointTransform(scale_range=(0.5, 0.5))(s)
    assert set(torch.unique(shrunk["depth"]).tolist()) <= {0.0, 5.0}
    resized = JointTransform(resize=(2 * H, 2 * W))(s)  # a fixed evaluation resize keeps metres
    assert set(torch.unique(resized["depth"]).tolist()) == {0.0, 2.5}
