"""BSDS edge ODS-F: MATLAB thinning derived by hand, maximum one-to-one matching against a dense
assignment reference, split-level accumulation, and the maxDist of the datasets."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vtagml.data.nyud import NYUDv2
from vtagml.data.synthetic import SyntheticScenes, render_scene
from vtagml.data.taskonomy import Taskonomy
from vtagml.tasks import Edges, build_task
from vtagml.tasks.bsds import bsds_thresholds, bwmorph_thin, edge_counts, match_count, match_radius
from vtagml.tasks.metrics import EdgeODSF


def grid(rows):
    return np.array([[c == "#" for c in r] for r in rows])


# ----------------------------------------------------------------- thinning (MATLAB bwmorph 'thin', inf)


def test_thin_two_by_two_square_keeps_its_bottom_left_pixel():
    # First subiteration (G3: (x2 | x3 | ~x8) & x1 = 0, x1 = east, x3 = north): the top-left pixel
    # (x1 = x7 = x8 = 1: X_H = 1, n1 = n2 = 2, x8 = 1 and x2 = x3 = 0), the top-right and the
    # bottom-right pixels (x1 = 0) are deleted; the bottom-left one has x1 = x3 = 1 and stays.
    # The lone pixel then fails G2 (n1 = 0) forever.
    sq = grid(["....", ".##.", ".##.", "...."])
    assert (bwmorph_thin(sq) == grid(["....", "....", ".#..", "...."])).all()


def test_thin_three_pixel_thick_bar_becomes_a_one_pixel_line():
    # Iteration 1, subiteration 1 (G3) deletes the top row (x2 = x3 = 0, x8 = 1) and the east
    # column (x1 = 0); subiteration 2 (G3': (x6 | x7 | ~x4) & x5 = 0) deletes the west end of the
    # middle row (x5 = 0) and the rest of the bottom row (x6 = x7 = 0, x4 = 1). The middle row
    # without its two end pixels is left, and iteration 2 keeps it (its ends have n1 = 1).
    bar = grid([".......", ".#####.", ".#####.", ".#####.", "......."])
    assert (bwmorph_thin(bar) == grid([".......", ".......", "..###..", ".......", "......."])).all()
    long_bar = np.zeros((7, 30), bool)
    long_bar[2:5, 3:27] = True
    thin = bwmorph_thin(long_bar)
    assert thin.sum(axis=0).max() == 1 and thin[3, 4:26].all() and thin.sum() == 22


def test_thin_matches_the_documented_example_and_keeps_thin_curves():
    # scikit-image's ``thin`` docstring example (Lam-Lee-Suen 1992 p. 879, the MATLAB algorithm)
    square = np.zeros((7, 7), bool)
    square[1:-1, 2:-2] = True
    square[0, 1] = True
    expected = np.zeros((7, 7), bool)
    expected[0, 1] = expected[1, 2] = True
    expected[2:5, 3] = True
    assert (bwmorph_thin(square) == expected).all()
    curve = grid(["#.....", ".#....", "..###.", ".....#"])  # 8-connected 1-px curve: unchanged
    assert (bwmorph_thin(curve) == curve).all()
    assert not bwmorph_thin(np.zeros((3, 4), bool)).any()


def reference_thin(bw):
    """Whole-image parallel subiterations, written independently of the boundary tracking."""
    from vtagml.tasks.bsds import NEIGHBOURS, thin_luts
    im = np.pad(bw, 1)
    h, w = bw.shape
    while True:
        before = im.copy()
        for lut in thin_luts():
            code = sum(im[1 + dy:1 + dy + h, 1 + dx:1 + dx + w].astype(int) << i
                       for i, (dy, dx) in enumerate(NEIGHBOURS))
            im[1:-1, 1:-1] &= ~lut[code]
        if (im == before).all():
            return im[1:-1, 1:-1]


def test_thin_boundary_tracking_equals_whole_image_iterations():
    rng = np.random.default_rng(0)
    stack = rng.uniform(size=(40, 12, 15)) < rng.uniform(0.3, 0.95, size=(40, 1, 1))
    got = bwmorph_thin(stack)
    for bw, thin in zip(stack, got):
        assert (reference_thin(bw) == thin).all()


# ----------------------------------------------------------------- matching (BSDS correspondPixels)


def greedy_nearest_first(pred, gt, radius):
    """The maximal (not maximum) matching the old metric used: nearest pairs first."""
    p, g = np.argwhere(pred), np.argwhere(gt)
    d = np.linalg.norm(p[:, None] - g[None], axis=-1)
    used_p, used_g, n = set(), set(), 0
    for i, j in sorted(zip(*np.nonzero(d <= radius)), key=lambda ij: d[ij]):
        if i not in used_p and j not in used_g:
            used_p.add(i), used_g.add(j)
            n += 1
    return n


def dense_assignment_reference(pred, gt, radius):
    """Minimum-cost assignment on the dense cost matrix, pairs beyond ``radius`` at a prohibitive
    cost: the number of admissible pairs it keeps is the maximum one-to-one matching."""
    p, g = np.argwhere(pred), np.argwhere(gt)
    if len(p) == 0 or len(g) == 0:
        return 0
    d = np.linalg.norm(p[:, None] - g[None], axis=-1)
    big = 1e3 * (radius + 1) * (len(p) + len(g))
    cost = np.where(d <= radius, d, big)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] < big).sum())


def test_maximum_matching_beats_greedy_where_nearest_first_blocks():
    # p1 sits on g1 and is 1 px from g2; p2 is 1 px from g1 only. Greedy takes (p1, g1) first
    # and strands p2; the optimum pairs (p1, g2) and (p2, g1).
    pred, gt = grid(["..##.."]), grid([".##..."])
    assert greedy_nearest_first(pred, gt, 1.0) == 1
    assert match_count(pred, gt, max_dist=0.0, min_pixels=1.0) == 2 == dense_assignment_reference(pred, gt, 1.0)


def test_displacement_within_max_dist_matches_and_beyond_does_not():
    h, w = 480, 640
    radius = match_radius(h, w, 0.011)  # 8.8 px
    gt = np.zeros((h, w), bool)
    gt[100, 50:600] = True
    for shift, matched in ((1, 550), (8, 550), (9, 0)):
        assert match_count(np.roll(gt, shift, axis=0), gt, 0.011) == matched, shift
    diag = np.zeros((h, w), bool)
    diag[300, 300] = True
    assert match_count(np.roll(diag, (6, 6), axis=(0, 1)), diag, 0.011) == 1  # 8.49 px <= 8.8
    assert match_count(np.roll(diag, (6, 7), axis=(0, 1)), diag, 0.011) == 0  # 9.22 px
    assert radius == pytest.approx(8.8)


def test_matching_agrees_with_dense_assignment_on_random_maps():
    rng = np.random.default_rng(1)
    for trial in range(60):
        h, w = rng.integers(5, 14, size=2)
        pred = rng.uniform(size=(h, w)) < rng.uniform(0.05, 0.5)
        gt = rng.uniform(size=(h, w)) < rng.uniform(0.05, 0.5)
        max_dist = rng.choice([0.0, 0.05, 0.1, 0.2])
        radius = max(1.0, match_radius(h, w, max_dist))
        assert match_count(pred, gt, max_dist, min_pixels=1.0) == dense_assignment_reference(pred, gt, radius), trial


def test_edge_counts_per_threshold_by_hand():
    prob = np.zeros((6, 8))
    prob[2, 1:7] = [0.2, 0.6, 0.6, 0.9, 0.9, 0.9]  # a 1-px line of rising confidence
    prob[5, 7] = 0.95  # a false positive 3 px from the nearest edge pixel
    gt = np.zeros((6, 8), bool)
    gt[3, 2:7] = True  # the true edge, one row lower
    counts = edge_counts(prob, gt, np.array([0.1, 0.5, 0.8, 0.92, 0.99]), radius=1.5)
    assert counts.tolist() == [
        [5, 5, 3, 0, 0],  # matched predicted pixels (the end at column 1 is 1.41 px from (3, 2))
        [7, 6, 4, 1, 0],  # predicted (thinning keeps 1-px lines and isolated pixels)
        [5, 5, 3, 0, 0],  # matched ground truth
        [5, 5, 5, 5, 5],  # ground truth
    ]


# ----------------------------------------------------------------- the metric


def synthetic_edge_batch(n, size=(40, 56), seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, 1, *size)
    for i in range(n):
        r = int(torch.randint(5, size[0] - 5, (1,), generator=g))
        c = int(torch.randint(5, size[1] - 5, (1,), generator=g))
        target[i, 0, r, 3:-3] = 1
        target[i, 0, 3:-3, c] = 1
    blur = torch.nn.functional.avg_pool2d(torch.roll(target, 1, dims=2), 3, 1, 1)
    prob = (blur * 2 + 0.3 * torch.rand(target.shape, generator=g)).clamp(0, 1)
    return prob, target


def test_batches_accumulate_like_one_call_and_states_merge_like_ddp():
    prob, target = synthetic_edge_batch(6)
    valid = torch.ones_like(target, dtype=torch.bool)
    whole = EdgeODSF(max_dist=0.02)
    whole.update(prob, target, valid)
    split = EdgeODSF(max_dist=0.02)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        split.update(prob[sl], target[sl], valid[sl])
    a, b = EdgeODSF(max_dist=0.02), EdgeODSF(max_dist=0.02)
    a.update(prob[:2], target[:2], valid[:2])
    b.update(prob[2:], target[2:], valid[2:])
    a.merge_state(b)
    for m in (split, a):
        for name in ("matched_pred", "num_pred", "matched_gt", "num_gt"):
            assert torch.equal(getattr(m, name), getattr(whole, name)), name
    assert 0.5 < whole.compute().item() <= 1.0
    # the split sums are the per-image counts summed
    per_image = sum(edge_counts(p[0].double().numpy(), t[0].numpy() > 0.5, whole.levels, whole.radius(40, 56))
                    for p, t in zip(prob, target))
    assert whole.num_pred.tolist() == per_image[1].tolist() and whole.matched_gt.tolist() == per_image[2].tolist()


def test_ods_is_the_best_f_over_the_99_threshold_grid():
    gt = torch.zeros(1, 1, 4, 6)
    gt[0, 0, 1, 1:5] = 1
    pred = torch.zeros(1, 1, 4, 6)
    pred[0, 0, 1, 1:5] = 0.75  # the true edge (values exact in float32)
    pred[0, 0, 3, 0:6] = 0.375  # 6 false positives 2 px away
    m = EdgeODSF(max_dist=0.0, thin=False)
    m.update(pred, gt, torch.ones_like(gt, dtype=torch.bool))
    assert m.levels.tolist() == pytest.approx(bsds_thresholds(99).tolist()) and m.levels[0] == pytest.approx(0.01)
    # t = 0.01..0.37: P = 4/10, R = 1; t = 0.38..0.75: P = R = 1; t >= 0.76: nothing predicted
    assert m.num_pred.tolist() == [10.0] * 37 + [4.0] * 38 + [0.0] * 24
    assert m.matched_pred.tolist() == m.matched_gt.tolist() == [4.0] * 75 + [0.0] * 24
    assert m.num_gt.tolist() == [4.0] * 99
    assert m.compute().item() == 1.0
    low = EdgeODSF(max_dist=0.0, thresholds=1, thin=False)  # the single threshold 0.5
    low.update(pred.clamp(max=0.5) + (pred > 0) * 0.2, gt, torch.ones_like(gt, dtype=torch.bool))
    assert low.compute().item() == pytest.approx(2 * 0.4 / 1.4)  # P = 4/10, R = 1


def test_approximate_mode_is_a_subset_of_the_grid_and_a_lower_bound():
    prob, target = synthetic_edge_batch(4, seed=3)
    valid = torch.ones_like(target, dtype=torch.bool)
    exact, approx = EdgeODSF(max_dist=0.02), EdgeODSF(max_dist=0.02, approximate=True)
    exact.update(prob, target, valid)
    approx.update(prob, target, valid)
    assert len(approx.levels) == 19 and approx.levels == pytest.approx(exact.levels[4::5])
    assert torch.equal(approx.num_pred, exact.num_pred[4::5]) and torch.equal(approx.matched_gt, exact.matched_gt[4::5])
    assert approx.compute() <= exact.compute()


def test_absent_samples_are_skipped_and_arguments_are_checked():
    prob, target = synthetic_edge_batch(2, seed=4)
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[1] = False
    m, ref = EdgeODSF(), EdgeODSF()
    m.update(prob, target, valid)
    ref.update(prob[:1], target[:1], valid[:1])
    assert torch.equal(m.num_gt, ref.num_gt) and torch.equal(m.num_pred, ref.num_pred)
    with pytest.raises(ValueError, match="max_dist"):
        EdgeODSF(max_dist=-0.1)
    with pytest.raises(ValueError, match="thresholds"):
        EdgeODSF(thresholds=0)
    with pytest.raises(ValueError, match="num_workers"):
        EdgeODSF(num_workers=-1)
    with pytest.raises(ValueError, match="prob and target"):
        m.update(prob[:, :, :5], target, valid)
    with pytest.raises(ValueError, match="max_dist"):
        build_task("edges", max_dist=1.5)


def test_max_dist_is_a_dataset_property_that_reaches_the_metric():
    assert NYUDv2.edge_max_dist == 0.011
    assert Taskonomy.edge_max_dist == SyntheticScenes.edge_max_dist == 0.0075
    task = Edges(max_dist=NYUDv2.edge_max_dist)
    assert task.spec()["init_args"]["max_dist"] == 0.011
    metrics = task.build_metrics()
    assert metrics["odsf"].max_dist == 0.011 and metrics["odsf"].radius(480, 640) == pytest.approx(8.8)
    assert len(task.build_metrics(approximate=True)["odsf"].levels) == 19


@pytest.mark.slow
def test_worker_processes_give_the_serial_counts():
    prob, target = synthetic_edge_batch(3, seed=5)
    valid = torch.ones_like(target, dtype=torch.bool)
    serial, parallel = EdgeODSF(max_dist=0.02), EdgeODSF(max_dist=0.02, num_workers=2)
    serial.update(prob, target, valid)
    parallel.update(prob, target, valid)
    for name in ("matched_pred", "num_pred", "matched_gt", "num_gt"):
        assert torch.equal(getattr(serial, name), getattr(parallel, name)), name


# ----------------------------------------------------------------- frozen counts


FROZEN_COUNTS = Path(__file__).parent / "data" / "bsds_counts_e339f4b.npz"


def count_cases():
    """(name, prob, gt, thresholds, radius, thin) covering sizes, radii, ties and empty maps."""
    rng = np.random.default_rng(2024)
    grid99 = bsds_thresholds(99)
    for h, w in ((1, 1), (3, 9), (16, 16), (33, 20), (64, 64)):
        for radius in (1.0, 1.5, 3.3):
            prob = rng.uniform(size=(h, w))
            gt = rng.uniform(size=(h, w)) < rng.uniform(0.05, 0.5)
            yield f"uniform{h}x{w}r{radius}", prob, gt, grid99, radius, True
    smooth = np.cumsum(np.cumsum(rng.normal(size=(40, 48)), 0), 1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    yield "ties", np.round(smooth * 20) / 20, rng.uniform(size=(40, 48)) < 0.2, grid99, 2.0, True
    yield "repeated and unsorted thresholds", smooth, smooth > 0.6, np.array([0.5, 0.5, 0.2, 0.9, 0.0]), 1.0, True
    yield "unthinned", smooth, smooth > 0.7, grid99[4::5], 1.5, False
    yield "no prediction", np.zeros((20, 30)), rng.uniform(size=(20, 30)) < 0.3, grid99, 1.0, True
    yield "no ground truth", smooth, np.zeros((40, 48), bool), grid99, 1.0, True
    yield "both empty", np.zeros((8, 8)), np.zeros((8, 8), bool), grid99, 1.0, True
    prob, target = synthetic_edge_batch(2, size=(64, 80), seed=6)
    for i, radius in enumerate((1.0, 4.0)):
        yield f"edges{i}", prob[i, 0].double().numpy(), target[i, 0].numpy() > 0.5, grid99, radius, True
    for index in range(2):  # synthetic scenes and a blurred, cluttered prediction of their edges
        gt = render_scene(0, "val", index, "a", 64)["edges"] > 0
        blur = np.clip(np.convolve(gt.ravel().astype(float), np.ones(3) / 2, "same").reshape(gt.shape), 0, 1)
        yield f"scene{index}", 0.8 * blur + 0.3 * rng.uniform(size=gt.shape), gt, grid99, 1.0 + 2 * index, True


def test_counts_equal_the_frozen_counts_of_the_flow_implementation():
    # Counts computed by the per-threshold max-flow implementation (commit e339f4b) on these
    # cases; the batched Hopcroft-Karp matching must reproduce every one of them.
    frozen = np.load(FROZEN_COUNTS)
    names = []
    for name, prob, gt, thresholds, radius, thin in count_cases():
        names.append(name)
        assert np.array_equal(edge_counts(prob, gt, thresholds, radius, thin), frozen[name]), name
    assert sorted(names) == sorted(frozen.files)
