"""Unsupervised domain adaptation: gradient reversal signs, discriminators, what trains, the command."""

import json

import torch

from tests.test_persistence import trained
from vtagml.adaptation import (
    AdaptationModule,
    OutputDiscriminator,
    adapt_main,
    adversarial_loss,
    reverse_gradient,
)


def test_reverse_gradient_negates_and_scales():
    x = torch.randn(3, requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_discriminator_and_model_gradients_have_opposite_signs():
    torch.manual_seed(0)
    disc = OutputDiscriminator(3, width=4)
    assert disc(torch.rand(2, 3, 64, 48)).shape == (2, 1, 4, 3)
    source, target = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32, requires_grad=True)
    adversarial_loss(disc, source, target, reverse_scale=0.1).backward()
    d_grads = [p.grad.clone() for p in disc.parameters()]
    assert source.grad is None  # source predictions only teach the discriminator
    # the same loss without reversal: the target map's gradient is the opposite, times 1/scale
    disc.zero_grad()
    t2 = target.detach().clone().requires_grad_(True)
    d_src, d_tgt = disc(source.detach()), disc(t2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ((bce(d_src, torch.ones_like(d_src)) + bce(d_tgt, torch.zeros_like(d_tgt))) / 2).backward()
    torch.testing.assert_close(target.grad, -0.1 * t2.grad)
    for a, b in zip(d_grads, disc.parameters()):  # the discriminator descends its own loss either way
        torch.testing.assert_close(a, b.grad)


def test_adapt_trains_adapters_decoders_heads_and_discriminators_only(tmp_path, tiny_checkpoint):
    net = trained(tiny_checkpoint)
    module = AdaptationModule(net, adv_weight=0.1)
    names = {id(p): n for n, p in module.named_parameters()}
    optimized = {names[id(p)] for g in module.parameter_groups() for p in g["params"]}
    assert any(n.startswith("discriminators.") for n in optimized)
    assert not any(n.startswith("net.trunk.") for n in optimized)
    assert any(n.startswith("net.adapters.") for n in optimized) and any(n.startswith("net.heads.") for n in optimized)
    saved = trained(tiny_checkpoint).save_adapters(tmp_path / "model")
    out = tmp_path / "adapt"
    adapt_main(["--model", str(saved), "--out", str(out), "--train-samples", "8", "--val-samples", "4",
                "--batch-size", "4", "--epochs", "1", "--baselines"])
    res = json.loads((out / "results.json").read_text())
    assert len(res["results"]) == 4 and all("semseg/miou" in r for r in res["results"].values())
    assert (out / "model" / "adapters.safetensors").exists() and (out / "results.md").exists()
