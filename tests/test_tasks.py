"""Tasks, masked losses and split-level metrics against hand-computed and NumPy references."""

import numpy as np
import pytest
import torch

from vtagml.data.collate import collate_multitask
from vtagml.tasks import (TASK_REGISTRY, Intensity, build_task, build_tasks, multitask_gain, primary_metrics,
                          register_task)

# ----------------------------------------------------------------- references


def np_depth(pred, target):
    v = target > 0
    p, t = pred[v].astype(np.float64), target[v].astype(np.float64)
    return {"rmse": np.sqrt(np.mean((p - t) ** 2)), "absrel": np.mean(np.abs(p - t) / t),
            "delta1": np.mean(np.maximum(p / t, t / p) < 1.25)}


def np_miou(pred, target, num_classes, ignore=255):
    v = target != ignore
    cm = np.bincount(num_classes * target[v] + pred[v], minlength=num_classes ** 2).reshape(num_classes, num_classes)
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    return np.mean(inter[union > 0] / union[union > 0]), inter.sum() / cm.sum()


def run_metrics(task, batches):
    metrics = task.build_metrics()
    for pred, target, present in batches:
        task.update_metrics(metrics, pred, target, present)
    return {k: float(m.compute()) for k, m in metrics.items()}


def random_batches(kind, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = int(torch.randint(1, 4, (1,), generator=g))
        if kind == "depth":
            target = torch.rand(b, 1, 6, 7, generator=g) * 5
            target[target < 0.8] = 0  # invalid pixels
            pred = torch.rand(b, 1, 6, 7, generator=g) * 5 + 0.1
        elif kind == "semseg":
            target = torch.randint(0, 4, (b, 6, 7), generator=g)
            target[torch.rand(b, 6, 7, generator=g) < 0.2] = 255
            pred = torch.randn(b, 4, 6, 7, generator=g)
        else:  # normals
            target = torch.nn.functional.normalize(torch.randn(b, 3, 6, 7, generator=g), dim=1)
            target[:, :, 0, 0] = 0  # invalid pixel
            pred = torch.nn.functional.normalize(torch.randn(b, 3, 6, 7, generator=g), dim=1)
        out.append((pred, target, torch.ones(b, dtype=torch.bool)))
    return out


# ----------------------------------------------------------------- metrics


def test_depth_metrics_accumulate_over_batches_like_numpy():
    batches = random_batches("depth")
    got = run_metrics(build_task("depth"), batches)
    ref = np_depth(torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy())
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-6), k


def test_semseg_metrics_match_confusion_matrix_reference():
    task = build_task("semseg", num_classes=4)
    batches = random_batches("semseg")
    got = run_metrics(task, batches)
    pred = torch.cat([b[0] for b in batches]).argmax(1).numpy()
    miou, acc = np_miou(pred, torch.cat([b[1] for b in batches]).numpy(), 4)
    assert got["miou"] == pytest.approx(miou, rel=1e-6) and got["pixel_acc"] == pytest.approx(acc, rel=1e-6)


def test_miou_absent_class_conventions_are_pinned():
    # a 2-image split over 4 classes; class 3 occurs in neither ground truth nor prediction
    target = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 255, 1]]])  # 255: unlabeled, its prediction is ignored
    pred_ids = torch.tensor([[[0, 1, 1, 1]], [[2, 0, 3, 1]]])
    logits = torch.nn.functional.one_hot(pred_ids, 4).permute(0, 3, 1, 2).float()
    # valid pixels: class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 3, fp 1 -> 3/4; class 2: tp 1, fn 1 -> 1/2
    drop = run_metrics(build_task("semseg", num_classes=4), [(logits, target, None)])
    assert drop["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3, abs=1e-7)
    zero = run_metrics(build_task("semseg", num_classes=4, absent_classes="zero"), [(logits, target, None)])
    assert zero["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2 + 0) / 4, abs=1e-7)  # MTI-Net eval_semseg
    # "drop" is torchmetrics' macro Jaccard; with every class present the conventions agree
    from torchmetrics.classification import MulticlassJaccardIndex
    tm = MulticlassJaccardIndex(num_classes=4, average="macro", ignore_index=255)
    tm.update(pred_ids, target)
    assert drop["miou"] == pytest.approx(float(tm.compute()), abs=1e-7)
    full = torch.tensor([[[0, 1, 2, 3]]])
    for absent in ("drop", "zero"):
        task = build_task("semseg", num_classes=4, absent_classes=absent)
        got = run_metrics(task, [(torch.nn.functional.one_hot(full, 4).permute(0, 3, 1, 2).float(), full, None)])
        assert got["miou"] == 1.0
    with pytest.raises(ValueError, match="absent_classes"):
        build_task("semseg", num_classes=4, absent_classes="nan")


def test_every_builtin_task_declares_its_primary_metric_first():
    tasks = build_tasks(["semseg", "depth", "normals", "edges", "reshading"], num_classes=4)
    assert primary_metrics(tasks) == {"semseg": "miou", "depth": "rmse", "normals": "mean_angle",
                                      "edges": "odsf", "reshading": "mae"}
    for task in tasks:
        for approximate in (False, True):
            assert next(iter(task.build_metrics(approximate=approximate))) == task.primary_metric


def test_multitask_gain_averages_over_tasks_one_primary_metric_each():
    results = {"semseg/miou": 0.44, "semseg/pixel_acc": 0.9, "depth/rmse": 0.55, "depth/absrel": 0.3,
               "depth/delta1": 0.1, "edges/odsf": 0.7}
    ref = {"semseg/miou": 0.40, "semseg/pixel_acc": 0.5, "depth/rmse": 0.50, "depth/absrel": 0.1,
           "depth/delta1": 0.9, "edges/odsf": 0.7}
    direction = {"semseg/miou": True, "semseg/pixel_acc": True, "depth/rmse": False, "depth/absrel": False,
                 "depth/delta1": True, "edges/odsf": True}
    primary = {"semseg": "miou", "depth": "rmse", "edges": "odsf"}
    # (+10% - 10% + 0) / 3 tasks: the secondary metrics, however bad, do not count
    assert multitask_gain(results, ref, direction, primary) == pytest.approx(0.0, abs=1e-9)
    assert multitask_gain({**results, "edges/odsf": 0.77}, ref, direction, primary) == pytest.approx(10 / 3)
    with pytest.raises(KeyError, match="reference.*normals/mean_angle"):
        multitask_gain({**results, "normals/mean_angle": 20.0}, ref, direction, {**primary, "normals": "mean_angle"})
    with pytest.raises(ValueError, match="edges/odsf.*0"):
        multitask_gain(results, {**ref, "edges/odsf": 0.0}, direction, primary)
    with pytest.raises(ValueError, match="primary"):
        multitask_gain(results, ref, direction, {})
    # without primary, the reference itself must name one metric per task
    one_each = {k: ref[k] for k in ("semseg/miou", "depth/rmse", "edges/odsf")}
    assert multitask_gain(results, one_each, direction) == multitask_gain(results, ref, direction, primary)
    with pytest.raises(ValueError, match="several metrics.*semseg.*pass primary"):
        multitask_gain(results, ref, direction)


def test_normals_metrics_match_numpy():
    batches = random_batches("normals")
    got = run_metrics(build_task("normals"), batches)
    p, t = torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy()
    valid = np.abs(t).sum(1) > 0
    ang = np.degrees(np.arccos(np.clip((p * t).sum(1), -1, 1)))[valid]
    assert got["mean_angle"] == pytest.approx(ang.mean(), rel=1e-5)
    assert abs(got["median_angle"] - np.median(ang)) <= 0.05  # histogram bins of 0.05 degrees
    for key, thr in (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0)):
        assert got[key] == pytest.approx(np.mean(ang < thr), abs=1e-6)


def test_metric_states_merge_like_ddp():
    for name, kind in (("depth", "depth"), ("normals", "normals")):
        task = build_task(name)
        a, b = random_batches(kind, seed=1), random_batches(kind, seed=2)
        whole = run_metrics(task, a + b)
        ma, mb = task.build_metrics(), task.build_metrics()
        for metrics, batches in ((ma, a), (mb, b)):
            for pred, target, present in batches:
                task.update_metrics(metrics, pred, target, present)
        for k in ma:
            ma[k].merge_state(mb[k])
            assert float(ma[k].compute()) == pytest.approx(whole[k], rel=1e-6), (name, k)


def test_absent_samples_do_not_count():
    task = build_task("depth")
    (pred, target, _), = random_batches("depth", n=1, seed=4)
    pred2, target2 = torch.cat([pred, pred * 3]), torch.cat([target, target + 1])
    present = torch.tensor([True] * len(pred) + [False] * len(pred))
    assert run_metrics(task, [(pred2, target2, present)]) == run_metrics(task, [(pred, target, None)])


# ----------------------------------------------------------------- losses


@pytest.mark.parametrize("name", ["semseg", "depth", "normals", "edges", "reshading"])
def test_losses_ignore_invalid_pixels_and_absent_samples(name):
    task = build_tasks([name], num_classes=4)[0]
    g = torch.Generator().manual_seed(0)
    shape = (3, task.channels, 5, 6)
    pred = torch.randn(shape, generator=g)
    pred = task.postprocess(pred).detach().requires_grad_(True)
    if name == "semseg":
        target = torch.randint(0, 4, (3, 5, 6), generator=g)
        target[0, 0, :3] = 255
        changed = target.clone()
        changed[0, 0, :3] = 255
    elif name == "depth":
        target = torch.rand(3, 1, 5, 6, generator=g) + 0.5
        target[0, 0, 0, :3] = 0
        changed = target
    elif name == "normals":
        target = torch.nn.functional.normalize(torch.randn(3, 3, 5, 6, generator=g), dim=1)
        target[0, :, 0, :3] = 0
        changed = target
    else:
        target = (torch.rand(3, 1, 5, 6, generator=g) > 0.7).float()
        changed = target
    present = torch.tensor([True, True, False])
    loss = task.loss(pred, target, present)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.count_nonzero(pred.grad[2]) == 0, "an absent label must give exactly zero gradient"
    if name in ("depth", "normals", "semseg"):
        assert torch.count_nonzero(pred.grad[0, :, 0, :3]) == 0, "invalid pixels must give zero gradient"
    other = target.clone()
    other[2] = other[2].flip(-1)  # the absent sample's label is irrelevant
    assert torch.equal(task.loss(pred, other, present), loss)
    nothing = task.loss(pred, changed, torch.zeros(3, dtype=torch.bool))
    assert nothing.item() == 0.0 and not torch.isnan(nothing)


def test_edge_loss_is_class_balanced():
    task = build_task("edges")
    logits, target = torch.zeros(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]])
    expected = (0.95 * np.log(2) + 0.05 * np.log(2)) / 2  # BCE of logit 0 is log 2
    assert task.loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_depth_log_l1_is_relative_error_over_valid_pixels():
    task = build_task("depth", loss="log_l1")
    pred = torch.tensor([[[[2.0, 1.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 4.0, 0.0]]]])  # the last pixel is invalid
    expected = (np.log(2.0) + np.log(4.0)) / 2
    assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert task.loss(pred * 3, target * 3).item() == pytest.approx(expected, rel=1e-6)  # scale-free


def test_depth_silog_separates_shape_from_scale():
    task = build_task("depth", loss="silog")
    target = torch.tensor([[[[1.0, 4.0, 0.0]]], [[[0.0, 0.0, 0.0]]]])  # an invalid pixel; an image with none
    pred = torch.tensor([[[[2.0, 8.0, 5.0]]], [[[1.0, 2.0, 3.0]]]], requires_grad=True)  # a uniform factor 2
    g = np.log(2.0)
    assert task.loss(pred, target).item() == pytest.approx(0.15 * g * g + g, rel=1e-6)  # (1 - λ) g² + |g|
    task.loss(pred, target).backward()
    assert torch.count_nonzero(pred.grad[1]) == 0 and pred.grad[0, 0, 0, 2] == 0
    shape_error = torch.tensor([[[[2.0, 2.0, 5.0]]]])  # log ratios log 2 and -log 2: mean 0, variance g²
    assert task.loss(shape_error, target[:1]).item() == pytest.approx(g * g + g, rel=1e-6)


def test_losses_need_no_host_synchronization():
    """Masked by ``where``, never by boolean indexing: nothing in a loss waits for the device."""
    edges = (torch.randn(2, 1, 6, 7), (torch.rand(2, 1, 6, 7) > 0.8).float(), None)
    for name, (pred, target, _) in [*((n, random_batches(n, n=1, seed=1)[0]) for n in ("semseg", "depth", "normals")),
                                    ("edges", edges)]:
        with torch.autograd.profiler.profile() as prof:
            build_tasks([name], num_classes=4)[0].loss(pred, target)
        ops = {e.name for e in prof.function_events}
        assert not ops & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select"}, name
    pred, target, _ = random_batches("semseg", n=1, seed=1)[0]
    weighted = build_tasks(["semseg"], num_classes=4, options={"semseg": {"class_weights": [1.0, 2.0, 3.0, 4.0]}})[0]
    with torch.autograd.profiler.profile() as prof:
        weighted.loss(pred, target)
    assert not {e.name for e in prof.function_events} & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"}


def test_semseg_class_weights_give_the_weighted_mean_of_labelled_pixels():
    """``class_weights``: PyTorch's weighted mean over labelled pixels of present samples; equal weights
    are the plain loss; without labelled pixels exactly 0; bad weights name the task."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 4, (3, 5, 6))
    target[0, :2] = 255  # unlabelled pixels
    present = torch.tensor([True, True, False])
    weights = [0.5, 2.0, 1.0, 3.0]
    task = build_tasks(["semseg"], num_classes=4, options={"semseg": {"class_weights": weights}})[0]
    kept = target[:2]
    expected = torch.nn.functional.cross_entropy(logits[:2], kept, weight=torch.tensor(weights), ignore_index=255)
    torch.testing.assert_close(task.loss(logits, target, present), expected)
    plain = build_tasks(["semseg"], num_classes=4)[0]
    equal = build_tasks(["semseg"], num_classes=4, options={"semseg": {"class_weights": [2.0] * 4}})[0]
    torch.testing.assert_close(equal.loss(logits, target, present), plain.loss(logits, target, present))
    nothing = task.loss(logits, torch.full_like(target, 255))
    nothing.backward()
    assert nothing.item() == 0.0 and logits.grad.abs().sum() == 0
    assert task.spec()["init_args"]["class_weights"] == weights  # configs and saved models rebuild it
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0, 1.0], [0.0] * 4):
        with pytest.raises(ValueError, match="'semseg': class_weights"):
            build_tasks(["semseg"], num_classes=4, options={"semseg": {"class_weights": bad}})


def test_semseg_jaccard_weight_adds_the_soft_iou_loss_of_the_classes_present():
    """Hand-computed soft Jaccard: class 0 soft IoU 0.75 / 1.5, class 1 0.4 / 1.2, class 2 (predicted, not
    in the target) left out; ignored pixels and absent samples take no part; no label: exactly 0."""
    probs = torch.tensor([[0.75, 0.2, 0.05], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])  # pixels A, B, C
    logits = probs.log().T.reshape(1, 3, 1, 3).repeat(2, 1, 1, 1).requires_grad_()  # 2 samples of 1 x 3 pixels
    target = torch.tensor([[[0, 1, 255]], [[2, 2, 2]]])  # C unlabelled; sample 2 absent below
    present = torch.tensor([True, False])
    task = build_tasks(["semseg"], num_classes=3, options={"semseg": {"jaccard_weight": 2.0}})[0]
    jaccard = ((1 - 0.75 / 1.5) + (1 - 0.4 / 1.2)) / 2
    cross_entropy = -(np.log(0.75) + np.log(0.4)) / 2
    expected = torch.tensor([cross_entropy + 2 * jaccard, cross_entropy], dtype=torch.float32)
    torch.testing.assert_close(task.loss(logits, target, present), expected[0])
    plain = build_tasks(["semseg"], num_classes=3)[0]
    torch.testing.assert_close(plain.loss(logits, target, present), expected[1])
    nothing = task.loss(logits, target, torch.tensor([False, False]))
    nothing.backward()
    assert nothing.item() == 0.0 and logits.grad.abs().sum() == 0
    assert task.spec()["init_args"]["jaccard_weight"] == 2.0
    with torch.autograd.profiler.profile() as prof:
        task.loss(logits, target, present)
    assert not {e.name for e in prof.function_events} & {"aten::nonzero", "aten::item", "aten::_local_scalar_dense"}
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="'semseg': jaccard_weight"):
            build_tasks(["semseg"], num_classes=3, options={"semseg": {"jaccard_weight": bad}})


# ----------------------------------------------------------------- registry and collate


def test_registry_and_custom_tasks():
    with pytest.raises(KeyError, match="surface_curvature"):
        build_task("surface_curvature")
    with pytest.raises(ValueError, match="semseg.*num_classes"):
        build_tasks(["semseg", "depth"])
    with pytest.raises(ValueError, match="duplicate"):
        build_tasks(["depth", "depth"])
    if "albedo" not in TASK_REGISTRY:
        register_task("albedo", lambda **kw: Intensity(name="albedo", **kw))
    with pytest.raises(ValueError, match="already registered"):
        register_task("albedo", lambda **kw: Intensity(name="albedo", **kw))
    tasks = build_tasks(["albedo", "semseg"], num_classes=7, weights={"albedo": 2.0})
    assert tasks[0].weight == 2.0 and tasks[1].channels == 7


def test_normals_flip_negates_x():
    n = torch.tensor([0.6, 0.0, 0.8]).view(3, 1, 1).repeat(1, 2, 3)
    n[:, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    flipped = build_task("normals").hflip(n)
    assert torch.equal(flipped[:, 0, 2], torch.tensor([-1.0, 0.0, 0.0]))
    assert torch.equal(flipped[:, 1, 1], torch.tensor([-0.6, 0.0, 0.8]))


def test_collate_marks_absent_labels():
    a = {"image": torch.zeros(3, 4, 4), "depth": torch.ones(1, 4, 4), "semseg": torch.zeros(4, 4, dtype=torch.long)}
    b = {"image": torch.ones(3, 4, 4), "semseg": torch.ones(4, 4, dtype=torch.long)}
    batch = collate_multitask([a, b])
    assert batch["image"].shape == (2, 3, 4, 4)
    assert batch["present"]["depth"].tolist() == [True, False]
    assert batch["present"]["semseg"].tolist() == [True, True]
    assert torch.equal(batch["depth"][1], torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="'depth'"):
        collate_multitask([a, {"image": torch.zeros(3, 4, 4), "depth": torch.ones(1, 5, 5)}])
