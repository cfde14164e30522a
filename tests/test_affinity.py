"""TROA: scale-free affinities (cosine / normalized lookahead), invariances, exact vs first order,
identical and opposed tasks, asymmetry, absent tasks, non-finite steps, conditioning."""

import math

import pytest
import torch

from tests.conftest import TINY_SWIN
from tests.test_model import randomize_adapters
from vtagml import VTAGML
from vtagml.affinity import (
    TaskAffinity,
    conditioning_weights,
    cosine_affinity,
    lookahead_affinity,
    lookahead_gains,
    update_affinity_ema,
)
from vtagml.data import SyntheticScenes, collate_multitask
from vtagml.engine.module import branch_inputs, label_counts, sub_batch, task_losses
from vtagml.tasks import SurfaceNormals, build_tasks


def build(checkpoint, tasks, num_classes=6, weights=None):
    torch.manual_seed(0)
    if weights:
        tasks = build_tasks(tasks, num_classes=num_classes, weights=weights)
    net = VTAGML(TINY_SWIN["name"], tasks=tasks, num_classes=num_classes, img_size=64, checkpoint_path=checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16).eval()
    randomize_adapters(net)
    return net


def batch_for(tasks, n=4):
    ds = SyntheticScenes(split="val", size=64, num_samples=n, tasks=tasks)
    return collate_multitask([ds[i] for i in range(n)])


def gradients(net, batch):
    """The training step's per-task embedding gradients (T, B, ...) from one backward."""
    tasks = net.tasks
    enc = net.encode(batch["image"])
    z_all = branch_inputs(enc.z, len(tasks))
    losses = task_losses(tasks, net.forward_branches(enc, range(len(tasks)), z_all), batch)
    torch.stack(list(losses.values())).sum().backward()
    return enc, z_all.grad.view(len(tasks), *enc.z.shape)


def first_order(net, batch):
    """A after one first-order update of a fresh TROA state (momentum irrelevant: first measurement)."""
    _, grads = gradients(net, batch)
    troa = TaskAffinity(len(net.tasks))
    assert troa.update(grads, label_counts(net.tasks, batch) > 0)
    return troa.affinity


def exact(net, batch, samples, step_size):
    """A after one exact lookahead update on the first ``samples`` samples, and the gradients used."""
    tasks = net.tasks
    enc, grads = gradients(net, batch)
    sub, targets = sub_batch(enc, batch, samples)

    def losses_at(z):
        preds = net.forward_branches(sub, range(len(tasks)), z.repeat(len(tasks), 1, 1, 1))
        return torch.stack(list(task_losses(tasks, preds, targets).values()))

    troa = TaskAffinity(len(tasks), step_size=step_size, exact_samples=samples)
    assert troa.update_exact(losses_at, enc.z, grads, label_counts(tasks, targets) > 0)
    return troa.affinity, grads


# --------------------------------------------------------------------------- pure maths


def test_equal_directions_with_norms_100_to_1_have_affinity_one():
    g = torch.randn(2, 50, dtype=torch.float64)
    grads = torch.stack([g[0] * 100, g[0], g[1]])
    gram = grads @ grads.T
    a = cosine_affinity(gram)
    assert a[0, 1].item() == pytest.approx(1.0, abs=1e-12) and a[1, 0].item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(a.diagonal(), torch.ones(3, dtype=torch.float64))
    # the third task relates to both alike, whatever their scales
    assert a[0, 2].item() == pytest.approx(a[1, 2].item(), abs=1e-12)


def test_exact_lookahead_is_asymmetric_on_a_constructed_case():
    """z in R^2 at 0; L1 = (x-1)^2 + 1 and L2 = (x-1)^2 + (y-1)^2: both gradients have norm-free
    directions (-1, 0) and (-1, -1)/sqrt(2), so a step of length 0.5 gives closed-form losses."""
    def losses(z):
        x, y = z[0], z[1]
        return torch.stack([(x - 1) ** 2 + 1, (x - 1) ** 2 + (y - 1) ** 2])

    z = torch.zeros(2, dtype=torch.float64)
    grads = torch.tensor([[-2.0, 0.0], [-2.0, -2.0]], dtype=torch.float64)
    gains = lookahead_gains(losses, z, grads, step=0.5)
    s = 0.5 / math.sqrt(2)
    expected = torch.tensor([[1 - 1.25 / 2, 1 - 1.25 / 2],
                             [1 - ((s - 1) ** 2 + 1) / 2, 1 - 2 * (s - 1) ** 2 / 2]], dtype=torch.float64)
    torch.testing.assert_close(gains, expected)
    a = lookahead_affinity(gains)
    torch.testing.assert_close(a.diagonal(), torch.ones(2, dtype=torch.float64))
    assert a[0, 1].item() == pytest.approx(expected[0, 1] / expected[1, 1])
    assert a[1, 0].item() == pytest.approx(expected[1, 0] / expected[0, 0])
    assert abs(a[0, 1] - a[1, 0]) > 0.1  # 0.644 vs 0.776; the cosine would say 0.707 both ways


def test_unlabelled_task_leaves_its_row_and_column_untouched():
    troa = TaskAffinity(3, momentum=0.5)
    grads = torch.randn(3, 2, 5, 5, 4)
    assert troa.update(grads, torch.tensor([True, True, True]))
    before = troa.affinity.clone()
    counts = troa.counts.clone()
    grads[2] = 0  # an unlabelled task's masked loss is exactly zero: so is its gradient
    assert troa.update(torch.randn(3, 2, 5, 5, 4) * torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1, 1, 1),
                       torch.tensor([True, True, False]))
    torch.testing.assert_close(troa.affinity[2], before[2], rtol=0, atol=0)
    torch.testing.assert_close(troa.affinity[:, 2], before[:, 2], rtol=0, atol=0)
    assert not torch.equal(troa.affinity[:2, :2], before[:2, :2])
    assert troa.counts[2].tolist() == counts[2].tolist() and troa.counts[0, 1] == counts[0, 1] + 1


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_step_is_skipped(bad):
    troa = TaskAffinity(2)
    troa.update(torch.randn(2, 3, 4), torch.tensor([True, True]))
    before, counts = troa.affinity.clone(), troa.counts.clone()
    grads = torch.randn(2, 3, 4)
    grads[1, 0, 0] = bad  # what one GradScaler overflow step leaves in the embedding gradients
    assert not troa.update(grads, torch.tensor([True, True]), grad_scale=65536.0)
    assert torch.equal(troa.affinity, before) and torch.equal(troa.counts, counts)
    assert torch.isfinite(troa.conditioning_weights()).all()
    assert not troa.update_exact(lambda z: torch.stack([z.sum().abs(), z.pow(2).sum()]) + 1, torch.ones(3, 4),
                                 grads, torch.tensor([True, True]))
    assert torch.equal(troa.affinity, before)


def test_grad_scale_does_not_change_affinity():
    """Divided out or not: both updates are invariant to a common gradient scale (what lets the
    trainer leave an fp16 loss scale on the device)."""
    torch.manual_seed(0)
    grads = torch.randn(3, 2, 6)
    a, b, c = TaskAffinity(3), TaskAffinity(3), TaskAffinity(3)
    a.update(grads, torch.ones(3, dtype=torch.bool))
    b.update(grads * 1024.0, torch.ones(3, dtype=torch.bool), grad_scale=1024.0)
    c.update(grads * 1024.0, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(a.affinity, b.affinity)
    torch.testing.assert_close(a.affinity, c.affinity)
    losses = lambda z: torch.stack([(z - 1).pow(2).sum(), (z + 0.5).pow(2).sum(), z.abs().sum()]) + 1  # noqa: E731
    z = torch.randn(2, 6, requires_grad=True)
    values = losses(z)
    true_grads = torch.stack([torch.autograd.grad(values[i], z, retain_graph=True)[0] for i in range(3)])
    z = z.detach()
    exact, scaled = TaskAffinity(3), TaskAffinity(3)
    exact.update_exact(losses, z, true_grads, torch.ones(3, dtype=torch.bool))  # own steps gain: measured
    scaled.update_exact(losses, z, true_grads * 1024.0, torch.ones(3, dtype=torch.bool))
    assert torch.equal(exact.affinity, scaled.affinity) and not torch.equal(exact.affinity, torch.eye(3))


def test_conditioning_weights_and_ema():
    z = torch.tensor([[1.0, -0.5, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, -1.0]])
    alpha = conditioning_weights(z)
    torch.testing.assert_close(alpha[0], torch.tensor([1 / 1.2, 0.2 / 1.2, 0.0]))
    torch.testing.assert_close(alpha[1], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(alpha[2], torch.tensor([0.0, 0.0, 1.0]))  # nothing helps it: itself
    torch.testing.assert_close(conditioning_weights(torch.eye(3)), torch.eye(3))

    ema, counts = torch.eye(2), torch.zeros(2, 2)
    first = torch.tensor([[0.5, 0.1], [0.2, 0.4]])
    measured = torch.tensor([[True, False], [True, True]])
    update_affinity_ema(ema, counts, first, 0.9, measured)
    torch.testing.assert_close(ema, torch.tensor([[0.5, 0.0], [0.2, 0.4]]))  # first measurement replaces I
    update_affinity_ema(ema, counts, torch.ones(2, 2), 0.9)
    torch.testing.assert_close(ema, torch.tensor([[0.55, 1.0], [0.28, 0.46]]))
    assert counts.tolist() == [[2.0, 1.0], [2.0, 2.0]]


def test_options_are_validated():
    with pytest.raises(ValueError, match="momentum"):
        TaskAffinity(2, momentum=1.0)
    with pytest.raises(ValueError, match="step_size"):
        TaskAffinity(2, step_size=0.0)
    with pytest.raises(ValueError, match="exact_samples"):
        TaskAffinity(2, exact_samples=0)


# --------------------------------------------------------------------------- on the model


TASKS3 = ("semseg", "depth", "normals")


def test_alpha_is_unchanged_by_a_loss_weight_times_100(tiny_checkpoint):
    batch = batch_for(TASKS3)
    plain = first_order(build(tiny_checkpoint, TASKS3), batch)
    heavy = first_order(build(tiny_checkpoint, TASKS3, weights={"depth": 100.0}), batch)
    torch.testing.assert_close(heavy, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(conditioning_weights(heavy), conditioning_weights(plain), atol=1e-5, rtol=0)
    assert not torch.allclose(plain, torch.eye(3), atol=1e-3)


def test_alpha_is_unchanged_by_the_batch_size(tiny_checkpoint):
    """The same 4 scenes as a batch of 4 and, each twice, as a batch of 8 (per-sample gradients
    halve, the gram quarters per pair and doubles in count: the raw lookahead halves)."""
    net = build(tiny_checkpoint, TASKS3)
    small = batch_for(TASKS3, 4)
    double = collate_multitask([{k: v[i] for k, v in small.items() if k != "present"} for i in [0, 1, 2, 3] * 2])
    torch.testing.assert_close(first_order(net, double), first_order(net, small), atol=1e-5, rtol=0)


def test_first_order_matches_exact_for_a_small_step(tiny_checkpoint):
    """B = 8, exact sub-batch of 2: the exact A equals the sub-batch's gradient cosines up to the
    Taylor remainder, which shrinks with the step (no B/n factor). In float64, so that rounding
    stays far below the remainder at the smallest step."""
    net = build(tiny_checkpoint, TASKS3).double()
    batch = batch_for(TASKS3, 8)
    batch["image"] = batch["image"].double()
    errors = []
    for step in (1e-2, 1e-3, 1e-4, 1e-5):
        a_exact, grads = exact(net, batch, 2, step)
        flat = grads[:, :2].reshape(3, -1).double()
        cos = cosine_affinity(flat @ flat.T).float()
        errors.append((a_exact - cos).abs().max().item())
        net.zero_grad()
    assert errors[-1] < 0.005, errors
    assert errors[0] > errors[1] > errors[2] > errors[3]
    torch.testing.assert_close(a_exact.diagonal(), torch.ones(3))


def _twin(net, src, dst):
    i, j = net.task_names.index(src), net.task_names.index(dst)
    with torch.no_grad():
        net.embeddings.weight[j].copy_(net.embeddings.weight[i])
        net.decoders[dst].load_state_dict(net.decoders[src].state_dict())
        net.heads[dst].load_state_dict(net.heads[src].state_dict())


def test_identical_tasks_have_affinity_one(tiny_checkpoint):
    net = build(tiny_checkpoint, ("normals", SurfaceNormals(name="normals_twin"), "depth"))
    _twin(net, "normals", "normals_twin")
    batch = batch_for(["normals", "depth"])
    batch["normals_twin"] = batch["normals"].clone()
    a = first_order(net, batch)
    assert a[0, 1].item() == pytest.approx(1.0, abs=1e-5) and a[1, 0].item() == pytest.approx(1.0, abs=1e-5)
    a_exact, _ = exact(net, batch, 2, 1e-3)
    assert a_exact[0, 1].item() == pytest.approx(1.0, abs=1e-3)


def test_opposite_targets_have_affinity_minus_one(tiny_checkpoint):
    net = build(tiny_checkpoint, ("normals", SurfaceNormals(name="normals_flipped"))).double()
    _twin(net, "normals", "normals_flipped")
    batch = batch_for(["normals"])
    batch["image"] = batch["image"].double()
    batch["normals_flipped"] = -batch["normals"]
    a = first_order(net, batch)
    assert a[0, 1].item() == pytest.approx(-1.0, abs=1e-5) and a[1, 0].item() == pytest.approx(-1.0, abs=1e-5)
    a_exact, _ = exact(net, batch, 2, 1e-5)  # -1 up to the Taylor remainder (float64: no rounding)
    assert a_exact[0, 1].item() == pytest.approx(-1.0, abs=1e-3)
    torch.testing.assert_close(conditioning_weights(a), torch.eye(2))  # a harmful task is not mixed in


def test_task_without_labels_in_the_batch_still_runs_and_is_not_measured(tiny_checkpoint):
    net = build(tiny_checkpoint, TASKS3)
    batch = batch_for(["semseg", "depth"])  # no normals key at all
    enc, grads = gradients(net, batch)
    assert torch.count_nonzero(grads[2]) == 0
    assert all(p.grad is not None for p in net.decoders["normals"].parameters())  # same graph, zero gradient
    troa = TaskAffinity(3)
    troa.update(grads, label_counts(net.tasks, batch) > 0)
    assert troa.counts[2].sum() == 0 and troa.counts[:, 2].sum() == 0 and troa.counts[0, 1] == 1
    assert torch.equal(troa.affinity[2], torch.eye(3)[2])


def test_model_exposes_affinity_and_weights_in_task_order(tiny_checkpoint):
    net = build(tiny_checkpoint, TASKS3)
    a = torch.tensor([[1.0, 0.5, -0.2], [0.1, 1.0, 0.0], [0.3, 0.0, 1.0]])
    net.troa.affinity.copy_(a)
    torch.testing.assert_close(net.task_affinity(), a)
    torch.testing.assert_close(net.conditioning_weights(), conditioning_weights(a))
    net.task_affinity().zero_()  # a copy: the model's state is not aliased
    torch.testing.assert_close(net.task_affinity(), a)
