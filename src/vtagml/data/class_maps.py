"""Declared label spaces and mappings of the real datasets (one place to correct an encoding)."""

from __future__ import annotations

import numpy as np

IGNORE = 255

NYUD_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)

#: Taskonomy segment_semantic: file 0 = uncertain (ignore), 1 = background, 2..17 = COCO classes.
TASKONOMY_CLASSES: tuple[str, ...] = (
    "background", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "teddy bear",
)

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
#: Official cityscapesScripts labelId -> trainId (ids not listed are ignored).
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}
#: The 16 classes SYNTHIA shares with Cityscapes (the 19 without terrain, truck, train).
CITYSCAPES16_CLASSES: tuple[str, ...] = tuple(c for c in CITYSCAPES_CLASSES if c not in ("terrain", "truck", "train"))
#: The 13-class subset reported in the UDA literature (16 without wall, fence, pole).
CITYSCAPES13_CLASSES: tuple[str, ...] = tuple(c for c in CITYSCAPES16_CLASSES if c not in ("wall", "fence", "pole"))
#: SYNTHIA RAND-CITYSCAPES class id -> Cityscapes class name (verify against the release's README).
SYNTHIA_TO_CITYSCAPES: dict[int, str] = {
    3: "road", 4: "sidewalk", 2: "building", 21: "wall", 5: "fence", 7: "pole", 15: "traffic light",
    9: "traffic sign", 6: "vegetation", 1: "sky", 10: "person", 17: "rider", 8: "car", 19: "bus",
    12: "motorcycle", 11: "bicycle",
}


#: NYUD-v2 class -> Taskonomy class (Taskonomy's labels are COCO predictions: what is none of its 16
#: indoor COCO classes is "background"). NYUD classes not listed (otherfurniture, otherprop, which
#: hold plants, clocks, vases, ovens...) are ignored. Taskonomy's potted plant, microwave, oven,
#: toaster, clock, vase and teddy bear have no NYUD counterpart.
NYUD_TO_TASKONOMY: dict[str, str] = {
    **{c: "background" for c in (
        "wall", "floor", "cabinet", "door", "window", "bookshelf", "picture", "counter", "blinds", "shelves", "curtain",
        "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "paper", "towel", "shower curtain", "box",
        "whiteboard", "person", "night stand", "lamp", "bathtub", "bag", "otherstructure")},
    "chair": "chair", "sofa": "couch", "bed": "bed", "table": "dining table", "desk": "dining table",
    "toilet": "toilet", "television": "tv", "refrigerator": "refrigerator", "books": "book", "sink": "sink",
}

#: Declared maps between label spaces, by name: (source classes, target classes, source -> target name).
CLASS_MAPS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]] = {
    "nyudv2->taskonomy": (NYUD_CLASSES, TASKONOMY_CLASSES, NYUD_TO_TASKONOMY),
}


def class_map(name: str) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    """A declared map: source classes, target classes and the table ``t[source_id] = target_id``
    (:data:`IGNORE` for a source class without a target; ``t[IGNORE] = IGNORE``)."""
    if name not in CLASS_MAPS:
        raise ValueError(f"unknown class map {name!r}; declared: {sorted(CLASS_MAPS)}")
    source, target, names = CLASS_MAPS[name]
    table = lookup_table({source.index(s): target.index(t) for s, t in names.items()}, size=256)
    return source, target, table


def lookup_table(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """A uint8 table ``t`` with ``t[source_id] = target_id`` and :data:`IGNORE` elsewhere."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def cityscapes_classes(num_classes: int) -> tuple[str, ...]:
    if num_classes not in (19, 16):
        raise ValueError(f"Cityscapes label spaces have 19 or 16 classes, got {num_classes}")
    return CITYSCAPES_CLASSES if num_classes == 19 else CITYSCAPES16_CLASSES
