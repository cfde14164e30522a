"""Tiny datasets written in the exact published layouts and encodings (DATA_FORMATS.md), shared by tests."""

import json
import struct
import zlib

import numpy as np
from PIL import Image

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


def write_nyud(root):
    """NYUD_MT: 3 images (train 0001, 0002; val 0003); class file values 5 (chair), 0 at [0, 0]
    (unlabeled), 1 at [0, 1] (wall), 40 at [1, 0] (otherprop); depth 2.5 m, 0 at [2, 3]."""
    for i, name in enumerate(["0001", "0002", "0003"]):
        rgb(root / "images" / f"{name}.jpg", i)
        seg = np.full((H, W), 5, np.uint8)
        seg[0, 0], seg[0, 1], seg[1, 0] = 0, 1, 40
        png(root / "segmentation" / f"{name}.png", seg)
        depth = np.full((H, W), 2.5, np.float32)
        depth[2, 3] = 0
        (root / "depth").mkdir(parents=True, exist_ok=True)
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


def write_taskonomy(root):
    """Buildings allensville (2 views, train) and beechwood (1 view, val; no texture edges);
    depth (euclidean and z-buffer) 1280 = 2.5 m, 65535 at [0, 0]; class file values 3 (couch),
    0 at [1, 1] (uncertain), 1 at [1, 2] (background)."""
    for b, views in (("allensville", 2), ("beechwood", 1)):
        for v in range(views):
            stem = f"point_{v}_view_0_domain_"
            rgb(root / "rgb" / b / f"{stem}rgb.png", v)
            depth = np.full((H, W), 1280, np.uint16)  # 2.5 m
            depth[0, 0] = 65535
            png(root / "depth_euclidean" / b / f"{stem}depth_euclidean.png", depth)
            png(root / "depth_zbuffer" / b / f"{stem}depth_zbuffer.png", depth)
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


def write_cityscapes(root, split="train", frames=1, labels=True):
    """``frames`` images of city aachen in ``split``; label ids 7 (road), 26 (car), 0, 33 (bicycle),
    9 (parking) in row 0, 0 elsewhere; disparity 257 (1 pixel; depth 0.2 * 2000 = 400 m), 0 and 1
    (invalid) at [0, 0] and [0, 1]. ``labels=False``: images only (a split whose labels are unread)."""
    for i in range(frames):
        stem = f"aachen_{i:06d}_000019"
        rgb(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", i)
        if not labels:
            continue
        ids = np.zeros((H, W), np.uint8)
        ids[0, :5] = [7, 26, 0, 33, 9]  # road, car, unlabeled, bicycle, parking
        png(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", ids)
        disp = np.full((H, W), 257, np.uint16)  # (257 - 1) / 256 = 1 pixel
        disp[0, 0] = 0
        disp[0, 1] = 1  # disparity exactly 0: invalid too
        png(root / "disparity" / split / "aachen" / f"{stem}_disparity.png", disp)
        (root / "camera" / split / "aachen").mkdir(parents=True, exist_ok=True)
        (root / "camera" / split / "aachen" / f"{stem}_camera.json").write_text(
            json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 2000.0, "fy": 2000.0}}))
    return root


def write_synthia(root, n=3):
    """RAND_CITYSCAPES: ``n`` images; class ids 3 (road), 8 (car), 13 (not shared), 1 (sky) in row 0
    of the first channel, instance ids in the second; depth 250 cm."""
    for i in range(n):
        name = f"{i:07d}.png"
        rgb(root / "RGB" / name, i)
        labels = np.zeros((H, W, 3), np.uint16)
        labels[0, :4, 0] = [3, 8, 13, 1]  # road, car, (not shared), sky
        labels[..., 1] = 300 + i  # instance ids live in the other channel
        png16_rgb(root / "GT" / "LABELS" / name, labels)
        png(root / "Depth" / "Depth" / name, np.full((H, W), 250, np.uint16))
    return root
