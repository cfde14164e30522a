"""Procedural indoor scenes whose labels come from one ray-cast geometry.

Every label of a sample is computed from the same per-pixel hit (distance, surface normal,
instance, face, solid-texture cell), so the labels agree with each other exactly: depth and
z-buffer depth differ by the ray cosine, normals are the derivative of the depth surface,
occlusion edges sit on depth discontinuities.

Conventions (camera frame: x right, y down, z forward; world frame: z up):

- ``image``  float32 (3, H, W) in [0, 1], quantized to 8 bit like a photograph.
- ``semseg`` int64 (H, W), classes :data:`SEMSEG_CLASSES`; 255 = ignore (never produced here:
  the room is closed, so every pixel hits a surface).
- ``depth`` euclidean distance along the ray in metres; ``depth_zbuffer`` its z component.
  float32 (1, H, W); 0 = invalid (never produced here).
- ``normals`` float32 (3, H, W) unit vectors in the camera frame, facing the camera;
  the zero vector = invalid (never produced here).
- ``edges`` float32 (1, H, W) in {0, 1}: texture, crease and occlusion boundaries.
  ``edges_occlusion``: occlusion boundaries only (a surface in front of another).
  Both mark the nearer pixel of each discontinuous 4-neighbour pair (one pixel thick).
- ``reshading`` float32 (1, H, W) in [0, 1]: Lambertian shading under a white light
  without albedo, ``0.2 + 0.8 * max(0, n . l)``.
- ``intrinsics`` float32 (3, 3) pinhole matrix in pixels.

Determinism: a sample depends only on (seed, split, domain, index, size). Scene parameters
come from NumPy's PCG64 streams and per-pixel work uses only IEEE-exact operations
(+, -, *, /, sqrt, floor, comparisons), so samples are bit-identical across machines.
"""

from __future__ import annotations

import colorsys
import copy
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vtagml.data.io import atomic_write

#: Semantic classes of the synthetic scenes, in label order.
SEMSEG_CLASSES: tuple[str, ...] = ("floor", "wall", "ceiling", "box", "sphere", "cylinder")
#: Every label the renderer produces, in a stable order.
SYNTHETIC_TASKS: tuple[str, ...] = (
    "semseg", "depth", "depth_zbuffer", "normals", "edges", "edges_occlusion", "reshading",
)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2, "pretrain": 3}
IGNORE_INDEX = 255
#: Instance ids: 0-5 the room's floor, ceiling and four walls; objects from this id on.
FIRST_OBJECT_INSTANCE = 6
#: Bump when rendering changes, so disk caches of older samples are not reused.
RENDERER_VERSION = 1

_FLOOR, _WALL, _CEILING, _BOX, _SPHERE, _CYLINDER = range(6)
_EPS = 1e-6
_CONTINUITY_TOL = 0.05
_TEXTURE_CODES = {"plain": 0, "checker": 1, "stripes": 2}  # relative depth gap above which a neighbour pair is an occlusion


@dataclass(frozen=True)
class Domain:
    """Appearance of a domain: palette, light, textures and sensor. Geometry is shared."""

    saturation: tuple[float, float]
    value: tuple[float, float]
    light_rgb: tuple[float, float, float]
    ambient: float
    intensity: float
    texture_kinds: tuple[str, ...]
    texture_freq: tuple[float, float]
    texture_contrast: tuple[float, float]
    noise: float
    gamma: float


#: Appearance domains. ``a`` and ``b`` are the train/adaptation pair; ``c`` is kept for
#: backbone pretraining so its images never coincide with the demo's.
DOMAINS: dict[str, Domain] = {
    "a": Domain((0.45, 0.9), (0.45, 0.95), (1.0, 0.92, 0.78), 0.30, 0.85,
                ("checker", "checker", "plain", "stripes"), (1.5, 4.0), (0.3, 0.6), 0.015, 2.2),
    "b": Domain((0.0, 0.3), (0.25, 0.8), (0.70, 0.82, 1.0), 0.12, 1.10,
                ("stripes", "stripes", "plain", "checker"), (3.0, 8.0), (0.15, 0.35), 0.06, 1.6),
    "c": Domain((0.1, 0.8), (0.3, 0.9), (1.0, 1.0, 1.0), 0.22, 0.95,
                ("checker", "stripes", "plain"), (1.0, 6.0), (0.2, 0.5), 0.03, 2.0),
}


def _to_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least 2x2 pixels, got {size}")
    return h, w


def _rng(seed: int, split: str, domain: str, index: int, stream: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(DOMAINS)}")
    key = [int(seed), SPLITS[split], ord(domain), int(index), stream]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def _cross(a, b) -> tuple[float, float, float]:
    """Cross product of two 3-vectors in NumPy's order of operations."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def sample_geometry(seed: int, split: str, domain: str, index: int) -> dict:
    """Scene geometry: room, camera, objects and light (domain-independent statistics)."""
    g = _rng(seed, split, domain, index, stream=0)
    room = np.array([g.uniform(4.0, 8.0), g.uniform(4.0, 8.0), g.uniform(2.5, 3.5)])
    cam = np.array([g.uniform(0.8, room[0] - 0.8), g.uniform(0.8, room[1] - 0.8), g.uniform(1.0, 1.8)])
    yaw = g.uniform(0.0, 2.0 * math.pi)
    pitch = math.radians(g.uniform(-32.0, -6.0))
    roll = math.radians(g.uniform(-4.0, 4.0))
    fov_x = math.radians(g.uniform(58.0, 72.0))

    forward = (math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch))
    right = (math.sin(yaw), -math.cos(yaw), 0.0)
    down = _cross(forward, right)
    cr, sr = math.cos(roll), math.sin(roll)
    rolled_right = [cr * r + sr * w for r, w in zip(right, down)]
    rolled_down = [-sr * r + cr * w for r, w in zip(right, down)]
    rotation = np.column_stack([rolled_right, rolled_down, forward])  # columns: camera axes in world

    objects = []
    for _ in range(int(g.integers(3, 9))):
        kind = int(g.integers(0, 3))
        if g.random() < 0.8:  # mostly in front of the camera so that objects are seen
            ang = yaw + g.uniform(-0.5, 0.5) * fov_x
            dist = g.uniform(1.2, 5.0)
            xy = (cam[0] + dist * math.cos(ang), cam[1] + dist * math.sin(ang))
        else:
            xy = (g.uniform(0.3, room[0] - 0.3), g.uniform(0.3, room[1] - 0.3))
        xy = [min(max(xy[k], 0.4), room[k] - 0.4) for k in range(2)]
        if kind == 0:
            half = np.array([g.uniform(0.15, 0.6), g.uniform(0.15, 0.6), g.uniform(0.15, 0.7)])
            obj = dict(kind=_BOX, center=np.array([xy[0], xy[1], half[2]]), half=half,
                       yaw=g.uniform(0.0, math.pi))
        elif kind == 1:
            r = g.uniform(0.15, 0.5)
            z = r if g.random() < 0.7 else g.uniform(r, min(2.0, room[2] - r))
            obj = dict(kind=_SPHERE, center=np.array([xy[0], xy[1], z]), radius=r)
        else:
            obj = dict(kind=_CYLINDER, center=np.array([xy[0], xy[1], 0.0]), radius=g.uniform(0.1, 0.4),
                       height=g.uniform(0.3, 1.6))
        # keep the camera outside every object
        reach = float(max(obj["half"]) if kind == 0 else obj["radius"]) * 1.5 + 0.3
        dx, dy = xy[0] - cam[0], xy[1] - cam[1]
        if math.sqrt(dx * dx + dy * dy) > reach:
            objects.append(obj)
    light = np.array([g.uniform(0.5, room[0] - 0.5), g.uniform(0.5, room[1] - 0.5), room[2] - 0.1])
    return dict(room=room, cam=cam, rotation=rotation, fov_x=fov_x, objects=objects, light=light)


def sample_appearance(seed: int, split: str, domain: str, index: int, num_instances: int) -> dict:
    """Per-instance colours and solid textures plus the domain's light and sensor."""
    g = _rng(seed, split, domain, index, stream=1)
    dom = DOMAINS[domain]
    colours = np.zeros((num_instances, 2, 3))
    texture, freqs, dirs = [], [], np.zeros((num_instances, 3))
    for i in range(num_instances):
        hue = g.random()
        sat = g.uniform(*dom.saturation)
        val = g.uniform(*dom.value)
        base = np.array(colorsys.hsv_to_rgb(hue, sat, val))
        contrast = g.uniform(*dom.texture_contrast)
        colours[i, 0] = base
        colours[i, 1] = base * (1.0 - contrast)
        texture.append(_TEXTURE_CODES[dom.texture_kinds[int(g.integers(0, len(dom.texture_kinds)))]])
        freqs.append(g.uniform(*dom.texture_freq))
        v = g.normal(size=3)
        dirs[i] = v / max(math.sqrt(float(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)), 1e-9)
    return dict(colours=colours, texture=np.array(texture), freqs=np.array(freqs), dirs=dirs, domain=dom, rng=g)


def intrinsics_matrix(fov_x: float, height: int, width: int) -> np.ndarray:
    """Pinhole intrinsics in pixels with square pixels and the principal point at the centre."""
    f = width / (2.0 * math.tan(fov_x / 2.0))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


# Vector fields are tuples of three contiguous arrays (x, y, z): one array per component keeps
# every per-pixel operation on contiguous memory. Helpers take components, so they work on
# fields and on 3-vectors alike.

def _dot(a, b):
    """Dot product of two 3-vectors (fields or scalars), in a fixed order with no BLAS or FMA."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _times_matrix(x, m: np.ndarray) -> tuple:
    """Components of ``x @ m`` for a vector field ``x`` and a 3x3 matrix, in a fixed order."""
    return tuple(x[0] * m[0, j] + x[1] * m[1, j] + x[2] * m[2, j] for j in range(3))


def _safe(d: np.ndarray) -> np.ndarray:
    """``d`` with exact zeros replaced by a tiny divisor (a copy is made only when needed)."""
    zero = d == 0.0
    return np.where(zero, 1e-12, d) if zero.any() else d


def _take(field, idx) -> tuple:
    return tuple(c[idx] for c in field)


# Each primitive has ``_t_<kind>(o, d, obj) -> (t, ctx)``, the hit distance of every ray (inf on
# a miss), and ``_attr_<kind>(o, d, obj, t, ctx, idx) -> (normal, local, face)`` for the rays
# ``idx`` that it wins. Attributes are computed once per pixel, for the nearest primitive only.

def _t_room(o, d, room):
    """Distance to the room's six planes, the axis of the plane hit and its side (+ or -)."""
    t = axis = positive = None
    for k in range(3):
        dk = d[k]
        ahead = dk > 0
        tk = np.where(dk != 0.0, (np.where(ahead, room[k], 0.0) - o[k]) / _safe(dk), np.inf)
        if t is None:
            t, axis, positive = tk, np.zeros(len(tk), np.int64), ahead
        else:
            closer = tk < t  # ties keep the lower axis, as argmin does
            t, axis, positive = np.where(closer, tk, t), np.where(closer, k, axis), np.where(closer, ahead, positive)
    return t, axis, positive


def _t_sphere(o, d, obj):
    oc = o - obj["center"]
    b = _dot(d, oc)
    disc = b * b - (_dot(oc, oc) - obj["radius"] ** 2)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc > 0) & (t > _EPS), t, np.inf), None


def _attr_sphere(o, d, obj, t, ctx, idx):
    oc = o - obj["center"]
    local = tuple(oc[k] + t * d[k][idx] for k in range(3))
    r = obj["radius"]
    return tuple(c / r for c in local), local, np.zeros(len(idx), np.int64)


def _t_box(o, d, obj):
    # slab test in the box frame (a rotation about z)
    c, s = math.cos(obj["yaw"]), math.sin(obj["yaw"])
    rel = o - obj["center"]
    p = (c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2])
    dl = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
    t_enter = t_exit = axis = None
    for k in range(3):
        inv = 1.0 / _safe(dl[k])
        t1 = (-obj["half"][k] - p[k]) * inv
        t2 = (obj["half"][k] - p[k]) * inv
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        if t_enter is None:
            t_enter, t_exit, axis = near, far, np.zeros(len(near), np.int64)
        else:
            axis = np.where(near > t_enter, k, axis)
            t_enter, t_exit = np.maximum(t_enter, near), np.minimum(t_exit, far)
    hit = (t_enter <= t_exit) & (t_enter > _EPS)
    return np.where(hit, t_enter, np.inf), (p, dl, axis)


def _attr_box(o, d, obj, t, ctx, idx):
    p, dl, axis = ctx
    dl, axis = _take(dl, idx), axis[idx]
    positive = np.choose(axis, dl) > 0
    sign = np.where(positive, -1.0, 1.0)
    n_local = tuple(np.where(axis == k, sign, 0.0) for k in range(3))
    local = tuple(np.where(axis == k, 0.0, p[k] + t * dl[k]) for k in range(3))
    return _times_matrix(n_local, _rot_z(obj["yaw"]).T), local, 2 * axis + positive


def _t_cylinder(o, d, obj):
    p = o - obj["center"]
    r, h = obj["radius"], obj["height"]
    a = d[0] ** 2 + d[1] ** 2
    b = d[0] * p[0] + d[1] * p[1]
    disc = b * b - a * (p[0] ** 2 + p[1] ** 2 - r * r)
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / _safe(a)
    z = p[2] + t_side * d[2]
    t_side = np.where((disc > 0) & (a > 0) & (t_side > _EPS) & (z >= 0) & (z <= h), t_side, np.inf)
    t_top = (h - p[2]) / _safe(d[2])
    xt, yt = p[0] + t_top * d[0], p[1] + t_top * d[1]
    t_top = np.where((t_top > _EPS) & (xt * xt + yt * yt <= r * r), t_top, np.inf)
    top = t_top < t_side
    return np.where(top, t_top, t_side), top


def _attr_cylinder(o, d, obj, t, top, idx):
    top = top[idx]
    oc = o - obj["center"]
    lx, ly, lz = (oc[k] + t * d[k][idx] for k in range(3))
    r = obj["radius"]
    normal = (np.where(top, 0.0, lx / r), np.where(top, 0.0, ly / r), np.where(top, 1.0, 0.0))
    return normal, (lx, ly, np.where(top, 0.0, lz)), top.astype(np.int64)


_PRIMITIVES = {
    _BOX: (_t_box, _attr_box),
    _SPHERE: (_t_sphere, _attr_sphere),
    _CYLINDER: (_t_cylinder, _attr_cylinder),
}


def _cast(o: np.ndarray, d: tuple, geo: dict):
    """Nearest hit of every ray: distance, normal, texture coords, instance, face, class."""
    n = d[0].shape[0]
    t, axis, positive = _t_room(o, d, geo["room"])
    winner = np.zeros(n, np.int64)  # 0: the room, k: object k (ties keep the earlier one)
    ctxs = []
    for k, obj in enumerate(geo["objects"], start=1):
        t_obj, ctx = _PRIMITIVES[obj["kind"]][0](o, d, obj)
        np.putmask(winner, t_obj < t, k)
        t = np.minimum(t, t_obj)
        ctxs.append(ctx)

    # the room's attributes everywhere, then each object's over the rays it wins
    sign = np.where(positive, -1.0, 1.0)
    normal = [np.where(axis == k, sign, 0.0) for k in range(3)]
    local = [np.where(axis == k, 0.0, o[k] + t * d[k]) for k in range(3)]  # in the wall's plane
    instance = np.where(axis == 2, positive.astype(np.int64), 2 + 2 * axis + positive)
    cls = np.where(axis == 2, np.where(positive, _CEILING, _FLOOR), _WALL)
    face = np.zeros(n, np.int64)
    for k, (obj, ctx) in enumerate(zip(geo["objects"], ctxs), start=1):
        idx = np.flatnonzero(winner == k)
        if idx.size:
            n_obj, l_obj, face[idx] = _PRIMITIVES[obj["kind"]][1](o, d, obj, t[idx], ctx, idx)
            for j in range(3):
                normal[j][idx], local[j][idx] = n_obj[j], l_obj[j]
            instance[idx], cls[idx] = FIRST_OBJECT_INSTANCE + k - 1, obj["kind"]
    return t, tuple(normal), tuple(local), instance, face, cls


@functools.lru_cache(maxsize=None)
def _gamma_lut(gamma: float) -> np.ndarray:
    """Linear intensity quantized to 4096 levels -> gamma-encoded uint8."""
    return np.round(255.0 * np.power(np.linspace(0.0, 1.0, 4096), 1.0 / gamma)).astype(np.uint8)


def _texture_pattern(local, instance, app) -> np.ndarray:
    """Binary solid-texture cell (0/1) per pixel from the instance's texture."""
    kind = app["texture"][instance]
    pattern = np.zeros(len(instance), dtype=np.int64)
    for code in (1, 2):
        idx = np.flatnonzero(kind == code)
        if idx.size == 0:
            continue
        freq = app["freqs"][instance[idx]]
        loc = _take(local, idx)
        if code == 1:  # checker: parity of the 3-D cell
            cells = [np.floor(c * freq) for c in loc]
            pattern[idx] = (cells[0] + cells[1] + cells[2]).astype(np.int64) % 2
        else:  # stripes along the instance's direction
            dirs = app["dirs"][instance[idx]]
            pattern[idx] = np.floor(_dot(loc, dirs.T) * freq).astype(np.int64) % 2
    return pattern


def _pair_edges(hw, t, pos, normal, ray, instance, face, pattern, origin):
    """Edge and occlusion marks for 4-neighbour pairs; the nearer pixel of a pair is marked.

    Per-pixel arrays are flat (H * W,). A pair of different instances is continuous (a crease,
    not an occlusion) when one surface's tangent plane, extended along the other pixel's ray,
    lands within a relative ``_CONTINUITY_TOL`` of that pixel's depth.
    """
    h, w = hw
    t2, instance, face, pattern = (x.reshape(hw) for x in (t, instance, face, pattern))
    edges = np.zeros(hw, dtype=bool)
    occl = np.zeros(hw, dtype=bool)
    for axis in (0, 1):
        a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))

        other = instance[a] != instance[b]
        any_edge = other | (face[a] != face[b]) | (pattern[a] != pattern[b])
        # the continuity test only matters where the instances differ
        ia, ja = np.nonzero(other)
        src = ia * w + ja
        dst = src + (w if axis == 0 else 1)

        def extends(i, j):
            n_i = _take(normal, i)
            denom = _dot(n_i, _take(ray, j))
            t_ext = _dot(n_i, tuple(pos[k][i] - origin[k] for k in range(3))) / _safe(denom)
            return (np.abs(denom) > 1e-6) & (np.abs(t_ext - t[j]) <= _CONTINUITY_TOL * t[j])

        occluding = np.zeros_like(other)
        occluding[ia, ja] = ~(extends(src, dst) | extends(dst, src))
        a_nearer = t2[a] <= t2[b]
        for marks, flag in ((edges, any_edge), (occl, occluding)):
            marks[a] |= flag & a_nearer
            marks[b] |= flag & ~a_nearer
    return edges, occl


def render_scene(seed: int, split: str, index: int, domain: str = "a", size: int | Sequence[int] = 64) -> dict:
    """Render one sample; returns NumPy arrays in the layouts of the module docstring."""
    height, width = _to_hw(size)
    hw = (height, width)
    geo = sample_geometry(seed, split, domain, index)
    num_instances = 6 + len(geo["objects"])
    app = sample_appearance(seed, split, domain, index, num_instances)
    k = intrinsics_matrix(geo["fov_x"], height, width)

    u = (np.arange(width) + 0.5 - k[0, 2]) / k[0, 0]
    v = (np.arange(height) + 0.5 - k[1, 2]) / k[1, 1]
    rot = geo["rotation"]  # world direction of pixel (u, v): u * right + v * down + forward
    cam_norm = np.sqrt(u[None, :] * u[None, :] + v[:, None] * v[:, None] + 1.0).reshape(-1)
    d = tuple((u[None, :] * rot[j, 0] + v[:, None] * rot[j, 1] + rot[j, 2]).reshape(-1) / cam_norm for j in range(3))
    o = geo["cam"]

    t, normal, local, instance, face, cls = _cast(o, d, geo)
    facing = np.where(_dot(normal, d) > 0, -1.0, 1.0)
    normal = tuple(c * facing for c in normal)
    pos = tuple(o[j] + t * d[j] for j in range(3))
    pattern = _texture_pattern(local, instance, app)

    to_light = tuple(geo["light"][j] - pos[j] for j in range(3))
    dist = np.sqrt(_dot(to_light, to_light))
    n_dot_l = np.maximum(_dot(normal, to_light) / dist, 0.0)
    reshading = 0.2 + 0.8 * n_dot_l

    dom = app["domain"]
    albedo = app["colours"].reshape(-1, 3)[2 * instance + pattern]
    light = (dom.ambient + dom.intensity * n_dot_l / (1.0 + 0.04 * dist * dist))[:, None] * np.array(dom.light_rgb)
    noise = (app["rng"].random((len(t), 3)) - 0.5) * (2.0 * dom.noise)
    linear = np.clip(albedo * light + noise, 0.0, 1.0)
    lut = _gamma_lut(dom.gamma)
    image = lut[np.floor(linear * 4095.0 + 0.5).astype(np.int64)]

    edges, occl = _pair_edges(hw, t, pos, normal, d, instance, face, pattern, o)
    normals_cam = _times_matrix(normal, rot)
    return {
        "image": image.reshape(*hw, 3),
        "semseg": cls.reshape(hw).astype(np.uint8),
        "depth": t.reshape(hw).astype(np.float32),
        "depth_zbuffer": (t / cam_norm).reshape(hw).astype(np.float32),
        "normals": np.stack([c.reshape(hw) for c in normals_cam], axis=-1).astype(np.float32),
        "edges": edges.astype(np.uint8),
        "edges_occlusion": occl.astype(np.uint8),
        "reshading": reshading.reshape(hw).astype(np.float32),
        "instance": instance.reshape(hw).astype(np.uint8),
        "intrinsics": k.astype(np.float32),
    }


def to_sample(arrays: dict, tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """Convert rendered arrays into the library's sample dict (see module docstring)."""
    sample = {
        "image": torch.from_numpy(arrays["image"]).permute(2, 0, 1).float().div_(255.0),
        "intrinsics": torch.from_numpy(arrays["intrinsics"]),
    }
    for task in tasks:
        a = torch.from_numpy(np.ascontiguousarray(arrays[task]))
        if task == "semseg":
            sample[task] = a.long()
        elif task == "normals":
            sample[task] = a.permute(2, 0, 1).contiguous()
        else:
            sample[task] = a.float().unsqueeze(0)
    return sample


class SyntheticScenes(Dataset):
    """Synthetic multitask indoor scenes, rendered on the fly (optionally cached to disk).

    Args:
        split: ``train``, ``val``, ``test`` or ``pretrain``; splits never share a scene.
        size: output size, an int or ``(H, W)``.
        domain: appearance domain, a key of :data:`DOMAINS`.
        num_samples: length of the dataset.
        seed: dataset seed; (seed, split, domain, index, size) fixes a sample bit for bit.
        tasks: labels to return (default: all of :data:`SYNTHETIC_TASKS`).
        cache_dir: if set, rendered samples are stored there as ``.npz`` (written atomically)
            and read back on later accesses.
        in_memory: keep rendered samples in this process's memory (each scene renders once
            per process: use with ``num_workers=0`` or persistent workers); :meth:`render_all`
            renders them up front in parallel processes.
    """

    classes = SEMSEG_CLASSES
    #: edge ODS-F match distance as a fraction of the image diagonal (the BSDS value); on small
    #: renders the edge task's ``min_pixels`` floor (1 px) is what binds
    edge_max_dist = 0.0075

    def __init__(
        self,
        split: str = "train",
        size: int | Sequence[int] = 64,
        domain: str = "a",
        num_samples: int = 1000,
        seed: int = 0,
        tasks: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        in_memory: bool = False,
    ):
        self.tasks = tuple(SYNTHETIC_TASKS if tasks is None else tasks)
        unknown = [t for t in self.tasks if t not in SYNTHETIC_TASKS]
        if unknown:
            raise ValueError(f"SyntheticScenes has no task(s) {unknown}; available: {list(SYNTHETIC_TASKS)}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        _rng(seed, split, domain, 0, 0)  # validates split and domain
        self.split, self.domain, self.seed = split, domain, int(seed)
        self.size = _to_hw(size)
        self.num_samples = int(num_samples)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[int, dict] | None = {} if in_memory else None

    def __len__(self) -> int:
        return self.num_samples

    def _cache_path(self, index: int) -> Path:
        h, w = self.size
        name = f"v{RENDERER_VERSION}_s{self.seed}_{self.split}_{self.domain}_{h}x{w}_{index:07d}.npz"
        return self.cache_dir / name

    def render(self, index: int) -> dict:
        """All rendered arrays of sample ``index`` (NumPy, before conversion)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        if self.cache_dir is None:
            return render_scene(self.seed, self.split, index, self.domain, self.size)
        path = self._cache_path(index)
        if path.exists():
            try:
                with np.load(path) as f:
                    return {k: f[k] for k in f.files}
            except Exception:  # unreadable: re-render and overwrite below
                pass
        arrays = render_scene(self.seed, self.split, index, self.domain, self.size)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
        return arrays

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._memory is None:
            return to_sample(self.render(index), self.tasks)
        if index not in self._memory:
            self._memory[index] = to_sample(self.render(index), self.tasks)
        return self._memory[index]

    def render_all(self, workers: int = 1, chunk: int = 32) -> None:
        """Render every scene not yet in memory (an ``in_memory`` dataset), in ``workers`` processes.

        Training then never waits for the renderer (one core renders about 300 scenes/s at 64x64,
        with the sample conversion; a GPU trains faster than that). The samples are the same bit
        for bit whatever the worker count: each depends only on its key. Chunks of ``chunk``
        scenes come back from PyTorch DataLoader workers as pickled NumPy arrays (not through
        ``/dev/shm``, which containers keep small), and every sample owns its memory. The global
        random state is left as it was. With fewer than two chunks to render per worker, or
        ``workers < 2``, the scenes render in this process.
        """
        if self._memory is None:
            raise ValueError("render_all keeps the scenes in memory: create the dataset with in_memory=True")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        missing = [i for i in range(self.num_samples) if i not in self._memory]
        workers = min(int(workers), math.ceil(len(missing) / chunk))
        if workers < 2:
            for index in missing:
                self[index]
            return
        # its own generator: creating workers would otherwise draw a base seed from the global RNG
        loader = DataLoader(_Renders(self, missing), batch_size=chunk, num_workers=workers, collate_fn=_as_arrays,
                            generator=torch.Generator())
        keys = iter(missing)
        for samples in loader:
            for sample in samples:
                self._memory[next(keys)] = {k: torch.from_numpy(v) for k, v in sample.items()}


def _as_arrays(samples: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    """Samples as NumPy arrays, which DataLoader workers send pickled instead of in shared memory."""
    return [{k: v.numpy() for k, v in sample.items()} for sample in samples]


class _Renders(Dataset):
    """The samples of ``indices`` of a :class:`SyntheticScenes`, rendered without its memory
    (what :meth:`SyntheticScenes.render_all`'s worker processes receive)."""

    def __init__(self, scenes: SyntheticScenes, indices: Sequence[int]):
        self.scenes = copy.copy(scenes)
        self.scenes._memory = None  # the workers render and return; the scenes' memory stays here
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.scenes[self.indices[i]]
