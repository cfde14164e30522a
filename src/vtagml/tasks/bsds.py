r"""The BSDS boundary benchmark in NumPy/SciPy: MATLAB-exact thinning and one-to-one pixel matching.

What the reference evaluators do per image and threshold (Dollár's ``edgesEvalImg``, which SEISM
wraps for the NYUD-v2 / PASCAL-Context multitask evaluators of MTI-Net, ATRC, InvPT):

1. binarize the edge probability map ``E >= max(eps, t)`` for ``t`` in
   :func:`bsds_thresholds` (``linspace(1/(K+1), 1-1/(K+1), K)``, K = 99);
2. thin it with MATLAB's ``bwmorph(E, 'thin', inf)`` (:func:`bwmorph_thin`); the ground truth
   is *not* thinned, and there are no ignore regions;
3. match predicted to ground-truth edge pixels one-to-one within
   ``maxDist * sqrt(H^2 + W^2)`` pixels (BSDS ``correspondPixels``, :func:`match_count`);
4. count (matched predicted, predicted, matched ground truth, ground truth) pixels; the counts
   are summed over the split and ODS is the best F over thresholds (done by
   :class:`vtagml.tasks.metrics.EdgeODSF`).

On the matching. ``correspondPixels`` solves a minimum-cost assignment (Goldberg's CSA) on a
sparse graph: real edges cost the pixel distance, and every pixel may instead go to an outlier
node at cost ``outlierCost = 100 * maxDist``. Leaving a pixel unmatched therefore costs a
hundred times more than the worst real match, so the assignment matches as many pixels as
possible and only then minimizes distance. With a single ground truth the counts depend on the
number of matches only, so we compute that number exactly as a maximum-cardinality bipartite
matching (Hopcroft-Karp in SciPy) instead of solving the assignment. (Strictly, CSA's objective
would give up one match when keeping it needed more than ``100 * maxDist`` of extra total
displacement along a chain of pixels; on 10 NYUD-like 480x640 maps x 5 thresholds, an exact
solution of CSA's objective, with its integer costs, gave the same count every time.)
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

#: Neighbour offsets (dy, dx) in the Lam-Lee-Suen numbering x1..x8: east, then counter-clockwise
#: (x2 north-east, x3 north = row above, ..., x8 south-east). Bit ``i`` of a neighbourhood code is
#: the neighbour ``x_{i+1}``.
NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def bsds_thresholds(k: int = 99) -> np.ndarray:
    """The benchmark's threshold grid ``linspace(1/(k+1), 1 - 1/(k+1), k)``, shape (k,).

    >>> bsds_thresholds(3).tolist()
    [0.25, 0.5, 0.75]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.linspace(1.0 / (k + 1), 1.0 - 1.0 / (k + 1), k)


@functools.lru_cache(maxsize=1)
def thin_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables (256,) bool of the two subiterations of ``bwmorph(.., 'thin')``.

    Lam, Lee and Suen, "Thinning methodologies - a comprehensive survey", TPAMI 1992, p. 879
    (the algorithm MATLAB cites): a pixel ``p`` with neighbours ``x1..x8`` is deleted in the first
    subiteration if G1, G2 and G3 hold, in the second if G1, G2 and G3' hold, where
    G1: ``X_H(p) = 1`` (exactly one 4-neighbour ``x_{2i-1}`` is 0 with ``x_{2i}`` or ``x_{2i+1}`` set),
    G2: ``2 <= min(n1, n2) <= 3`` with ``n1 = sum_k x_{2k-1} | x_{2k}``, ``n2 = sum_k x_{2k} | x_{2k+1}``,
    G3: ``(x2 | x3 | ~x8) & x1 = 0``, G3': ``(x6 | x7 | ~x4) & x5 = 0``.
    """
    code = np.arange(256)

    def x(k: int) -> np.ndarray:  # neighbour x_k, k = 1..9 (x9 = x1)
        return (code >> ((k - 1) % 8)) & 1

    x_h = sum((1 - x(2 * i - 1)) & (x(2 * i) | x(2 * i + 1)) for i in range(1, 5))
    n1 = sum(x(2 * k - 1) | x(2 * k) for k in range(1, 5))
    n2 = sum(x(2 * k) | x(2 * k + 1) for k in range(1, 5))
    g12 = (x_h == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ((x(2) | x(3) | (1 - x(8))) & x(1)) == 0
    g3p = ((x(6) | x(7) | (1 - x(4))) & x(5)) == 0
    return g12 & g3, g12 & g3p


def bwmorph_thin(bw: np.ndarray) -> np.ndarray:
    """MATLAB ``bwmorph(bw, 'thin', inf)`` of each (H, W) slice of ``bw`` (..., H, W) bool.

    Each iteration runs the two subiterations of :func:`thin_luts` in parallel over the image
    (every pixel decides on the image as it was when the subiteration began; outside the image is
    0) until an iteration deletes nothing. Only pixels with a 4-neighbour in the background can
    be deleted (G1), so the work follows the shrinking boundary: a pixel is re-examined only when
    its neighbourhood changed since it was last examined by the same subiteration.

    >>> bar = np.zeros((5, 7), bool); bar[1:4, 1:6] = True  # 3 px thick: a 1-px line, ends eaten
    >>> bwmorph_thin(bar).astype(int)
    array([[0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0],
           [0, 0, 1, 1, 1, 0, 0],
           [0, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0]])
    """
    bw = np.asarray(bw, dtype=bool)
    if bw.ndim < 2:
        raise ValueError(f"bw must have shape (..., H, W), got {bw.shape}")
    lead, (h, w) = bw.shape[:-2], bw.shape[-2:]
    stack = bw.reshape(-1, h, w)
    wp = w + 2
    # one padded flat array for the whole stack: the zero border separates rows and slices
    alive = np.zeros((stack.shape[0], h + 2, wp), bool)
    alive[:, 1:-1, 1:-1] = stack
    alive = alive.ravel()
    offs = np.array([dy * wp + dx for dy, dx in NEIGHBOURS], dtype=np.int64)
    four = offs[0::2]
    fg = np.flatnonzero(alive)
    border = fg[~(alive[fg + four[0]] & alive[fg + four[1]] & alive[fg + four[2]] & alive[fg + four[3]])]

    n = alive.size
    tracked = np.zeros(n, bool)  # border pixels whose neighbourhood code is kept up to date
    code = np.zeros(n, np.uint8)
    dirty = np.zeros(n, np.uint8)  # bit s: not yet examined by subiteration s since the last change
    queued = np.zeros(n, bool)
    mark = np.empty(n, np.int32)
    clear_bit = [np.uint8(0xFF ^ (1 << i)) for i in range(8)]

    def codes(f: np.ndarray) -> np.ndarray:
        c = np.zeros(f.size, np.uint8)
        for i, o in enumerate(offs):
            c |= alive[f + o].view(np.uint8) << np.uint8(i)
        return c

    def unique(f: np.ndarray) -> np.ndarray:  # dedupe without sorting
        order = np.arange(f.size, dtype=np.int32)
        mark[f] = order
        return f[mark[f] == order]

    def track(f: np.ndarray) -> None:
        tracked[f] = True
        code[f] = codes(f)
        dirty[f] = 3

    track(border)
    queued[border] = True
    work, luts = border, thin_luts()
    sub, idle = 0, 0
    while work.size and idle < 2:  # two consecutive idle subiterations = an idle iteration
        bit = np.uint8(1 << sub)
        examine = work[(dirty[work] & bit) != 0]
        dirty[examine] &= ~bit
        gone = examine[luts[sub][code[examine]]]
        added = None
        if gone.size:
            idle = 0
            alive[gone] = tracked[gone] = False
            dirty[gone] = 0
            for i, o in enumerate(offs):  # the pixel at q - o sees q as its neighbour i
                code[gone - o] &= clear_bit[i]
            changed = (gone[:, None] - offs).ravel()
            changed = changed[tracked[changed]]
            dirty[changed] = 3
            exposed = (gone[:, None] + four).ravel()
            exposed = unique(exposed[alive[exposed] & ~tracked[exposed]])
            track(exposed)
            added = np.concatenate([changed, exposed])
            added = unique(added[~queued[added]])
            queued[added] = True
        else:
            idle += 1
        keep = dirty[work] != 0
        queued[work[~keep]] = False
        work = work[keep] if added is None else np.concatenate([work[keep], added])
        sub ^= 1
    out = alive.reshape(-1, h + 2, wp)[:, 1:-1, 1:-1]
    return out.reshape(*lead, h, w)


def match_radius(height: int, width: int, max_dist: float) -> float:
    """Match distance in pixels: ``max_dist`` times the image diagonal (BSDS ``correspondPixels``).

    >>> round(match_radius(480, 640, 0.011), 6)
    8.8
    """
    if max_dist < 0:
        raise ValueError(f"max_dist must be >= 0, got {max_dist}")
    return max_dist * math.hypot(height, width)


def _coords(flat: np.ndarray, width: int) -> np.ndarray:
    return np.stack([flat // width, flat % width], axis=1).astype(np.float64)


def candidate_pairs(pred: np.ndarray, gt: np.ndarray, width: int, radius: float) -> csr_matrix:
    """Bipartite graph (P, G) of predicted and ground-truth pixels at most ``radius`` apart.

    Args:
        pred, gt: flat pixel indices (P,), (G,) of a (H, ``width``) image.
    Returns:
        CSR adjacency (P, G) whose data are the Euclidean distances plus 1 (so that 0 is stored).
    """
    if pred.size == 0 or gt.size == 0:
        return csr_matrix((pred.size, gt.size), dtype=np.float64)
    pairs = cKDTree(_coords(pred, width)).sparse_distance_matrix(
        cKDTree(_coords(gt, width)), radius, output_type="ndarray")
    return csr_matrix((pairs["v"] + 1.0, (pairs["i"], pairs["j"])), shape=(pred.size, gt.size))


def _max_matching(adj: csr_matrix, rows: np.ndarray | None = None) -> int:
    """Size of a maximum matching of the rows ``rows`` (default all) of a bipartite graph (P, G)
    (Hopcroft-Karp, SciPy's ``maximum_bipartite_matching``)."""
    if rows is not None:  # gather the selected rows' adjacency lists into one CSR matrix
        indptr = adj.indptr
        deg = indptr[rows + 1] - indptr[rows]
        rows, deg = rows[deg > 0], deg[deg > 0]
        if rows.size == 0:
            return 0
        ends = np.cumsum(deg)
        starts = np.repeat(indptr[rows] - (ends - deg), deg)
        indices = adj.indices[starts + np.arange(starts.size)]
        adj = csr_matrix((np.ones(indices.size, np.int8), indices, np.concatenate([[0], ends])),
                         shape=(rows.size, adj.shape[1]))
    if adj.nnz == 0:
        return 0
    return int((maximum_bipartite_matching(adj, perm_type="column") >= 0).sum())


def match_count(pred: np.ndarray, gt: np.ndarray, max_dist: float, min_pixels: float = 0.0) -> int:
    """Number of one-to-one matches between two boundary maps (H, W) bool, as in ``correspondPixels``.

    Pixels match within ``max(min_pixels, max_dist * diagonal)`` pixels (Euclidean, inclusive);
    the result is the size of a maximum matching, the number of pairs of BSDS's minimum-cost
    assignment with outliers (but for the caveat in the module docstring).

    >>> pred = np.zeros((3, 4), bool); gt = np.zeros((3, 4), bool)
    >>> pred[0, 1:3] = True; gt[0, 0:2] = True  # nearest-first greedy pairs (0,1) with itself: 1
    >>> match_count(pred, gt, max_dist=0.0, min_pixels=1.0)
    2
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be two (H, W) maps of one shape, got {pred.shape} and {gt.shape}")
    radius = max(min_pixels, match_radius(*pred.shape, max_dist))
    return _max_matching(candidate_pairs(np.flatnonzero(pred), np.flatnonzero(gt), pred.shape[1], radius))


def edge_counts(prob: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, radius: float,
                thin: bool = True, chunk_pixels: int = 1 << 22) -> np.ndarray:
    """Per-threshold BSDS counts of one image.

    Args:
        prob: (H, W) edge probabilities. gt: (H, W) bool ground-truth edges (not thinned).
        thresholds: (K,) binarization thresholds ``prob >= max(eps, t)``.
        radius: match distance in pixels. thin: thin the binarized maps (:func:`bwmorph_thin`).
        chunk_pixels: thresholds are thinned together in chunks of about this many pixels (memory
            about 10 bytes a pixel; 13 thresholds of a 480x640 map, all 99 of a small one).
    Returns:
        int64 (4, K): matched predicted pixels, predicted pixels (after thinning), matched
        ground-truth pixels, ground-truth pixels.
    """
    prob = np.asarray(prob, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    if prob.ndim != 2 or prob.shape != gt.shape:
        raise ValueError(f"prob and gt must be two (H, W) maps of one shape, got {prob.shape} and {gt.shape}")
    thresholds = np.maximum(np.asarray(thresholds, dtype=np.float64), np.finfo(np.float64).eps)
    k_all, pix_all = [], []
    chunk = max(1, chunk_pixels // prob.size)
    for start in range(0, thresholds.size, chunk):
        levels = thresholds[start:start + chunk]
        binary = prob[None] >= levels[:, None, None]
        k, y, x = np.nonzero(bwmorph_thin(binary) if thin else binary)
        k_all.append(k + start)
        pix_all.append(y * prob.shape[1] + x)
    k, pix = np.concatenate(k_all), np.concatenate(pix_all)
    bounds = np.searchsorted(k, np.arange(thresholds.size + 1))  # np.nonzero keeps k sorted
    out = np.zeros((4, thresholds.size), np.int64)
    out[1] = np.diff(bounds)
    out[3] = gt.sum()
    if pix.size and out[3, 0]:
        # one neighbour search for every pixel thinned at some threshold, then one flow per threshold
        union, row = np.unique(pix, return_inverse=True)
        adj = candidate_pairs(union, np.flatnonzero(gt), prob.shape[1], radius)
        for t in range(thresholds.size):
            out[0, t] = _max_matching(adj, row[bounds[t]:bounds[t + 1]])
    out[2] = out[0]  # one ground truth: every match pairs one predicted with one gt pixel
    return out


_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}


def _process_pool(num_workers: int) -> ProcessPoolExecutor:
    """A per-process pool of ``num_workers`` spawned workers, created on first use and kept."""
    key = (os.getpid(), num_workers)  # a forked child (DataLoader worker) builds its own
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[key]


def edge_counts_many(probs, gts, thresholds: np.ndarray, radius: float, thin: bool = True,
                     num_workers: int = 0) -> np.ndarray:
    """:func:`edge_counts` summed over images (probs and gts: sequences of (H, W) maps), int64 (4, K).

    With ``num_workers > 0`` the images are counted in parallel by that many worker processes
    (started once with the ``spawn`` method, so a script that uses it needs the usual
    ``if __name__ == "__main__":`` guard); the sums are identical to the serial ones.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if num_workers == 0 or len(probs) < 2:
        results = [edge_counts(p, g, thresholds, radius, thin) for p, g in zip(probs, gts)]
    else:
        pool = _process_pool(num_workers)
        results = [f.result() for f in [pool.submit(edge_counts, p, g, thresholds, radius, thin)
                                        for p, g in zip(probs, gts)]]
    return sum(results, np.zeros((4, thresholds.size), np.int64))
