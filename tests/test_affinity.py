"""TROA: first-order vs exact lookahead, identical and opposed tasks, asymmetry, conditioning."""

import pytest
import torch

from tests.conftest import TINY_SWIN
from tests.test_model import randomize_adapters
from vtagml import VTAGML
from vtagml.affinity import (
    conditioning_weights,
    exact_affinity,
    first_order_affinity,
    update_affinity_ema,
)
from vtagml.data import SyntheticScenes, collate_multitask
from vtagml.engine.module import branch_inputs, task_losses
from vtagml.tasks import SurfaceNormals


def build(checkpoint, tasks, num_classes=6):
    torch.manual_seed(0)
    net = VTAGML(TINY_SWIN["name"], tasks=tasks, num_classes=num_classes, img_size=64, checkpoint_path=checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16).eval()
    randomize_adapters(net)
    return net


def batch_for(tasks, n=4):
    ds = SyntheticScenes(split="val", size=64, num_samples=n, tasks=tasks)
    return collate_multitask([ds[i] for i in range(n)])


def measure(net, batch, lr):
    """Per-task gradients at z from one backward, first-order and exact affinities."""
    idx = list(range(len(net.tasks)))
    enc = net.encode(batch["image"])
    z_all = branch_inputs(enc.z, len(idx))
    _, losses = task_losses(net, enc, batch, idx, z_all)
    torch.stack(list(losses.values())).sum().backward()
    grads = z_all.grad.view(len(idx), *enc.z.shape)
    loss_vec = torch.stack([losses[n] for n in net.task_names]).detach()

    def losses_at(z):
        _, ls = task_losses(net, enc, batch, idx, z.repeat(len(idx), 1, 1, 1))
        return torch.stack([ls[n] for n in net.task_names])

    return first_order_affinity(grads, loss_vec, lr), exact_affinity(losses_at, enc.z, grads, lr), grads


def test_first_order_agrees_with_exact_for_small_steps(tiny_checkpoint):
    net = build(tiny_checkpoint, ("semseg", "depth", "normals"))
    batch = batch_for(["semseg", "depth", "normals"])
    errors = []
    for lr in (1.0, 0.1, 0.01):
        fo, ex, _ = measure(net, batch, lr)
        errors.append(((fo - ex).abs().max() / fo.abs().max()).item())
    assert errors[-1] < 0.02, errors
    assert errors[0] > errors[1] > errors[2]  # the gap is the Taylor remainder, shrinking with the step


def test_identical_tasks_have_high_mutual_affinity(tiny_checkpoint):
    twin = SurfaceNormals(name="normals_twin")
    net = build(tiny_checkpoint, ("normals", twin, "depth"))
    with torch.no_grad():
        net.embeddings.weight[1].copy_(net.embeddings.weight[0])
        net.decoders["normals_twin"].load_state_dict(net.decoders["normals"].state_dict())
        net.heads["normals_twin"].load_state_dict(net.heads["normals"].state_dict())
    batch = batch_for(["normals", "depth"])
    batch["normals_twin"] = batch["normals"].clone()
    fo, ex, grads = measure(net, batch, lr=0.01)
    assert torch.allclose(grads[0], grads[1])
    assert fo[0, 1] > 0 and fo[0, 1] == pytest.approx(fo[0, 0].item(), rel=1e-5)
    cos = fo[0, 1] / (fo[0, 0] * fo[1, 1]).sqrt()
    assert cos.item() == pytest.approx(1.0, abs=1e-5)
    assert ex[0, 1] > 0 and ex[1, 0] > 0
    assert fo[0, 1] > fo[0, 2].abs() and fo[1, 0] > fo[2, 0].abs()


def test_negated_targets_give_negative_affinity(tiny_checkpoint):
    flipped = SurfaceNormals(name="normals_flipped")
    net = build(tiny_checkpoint, ("normals", flipped))
    with torch.no_grad():
        net.embeddings.weight[1].copy_(net.embeddings.weight[0])
        net.decoders["normals_flipped"].load_state_dict(net.decoders["normals"].state_dict())
        net.heads["normals_flipped"].load_state_dict(net.heads["normals"].state_dict())
    batch = batch_for(["normals"])
    batch["normals_flipped"] = -batch["normals"]
    fo, ex, _ = measure(net, batch, lr=0.01)
    assert fo[0, 1] < 0 and fo[1, 0] < 0
    assert ex[0, 1] < 0 and ex[1, 0] < 0


def test_affinity_is_asymmetric(tiny_checkpoint):
    net = build(tiny_checkpoint, ("semseg", "depth", "edges"))
    fo, _, _ = measure(net, batch_for(["semseg", "depth", "edges"]), lr=0.01)
    assert not torch.allclose(fo, fo.T, rtol=0.05)


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
