"""Unsupervised domain adaptation (gradient reversal signs, discriminators, what trains, the command on
synthetic and real-format data) and the novel-domain report."""

import json

import pytest
import torch
import yaml

from tests.real_data import write_cityscapes, write_synthia
from tests.test_persistence import make, trained
from vtagml.adaptation import (
    AdaptationModule,
    OutputDiscriminator,
    adapt_main,
    adversarial_loss,
    novel_domain_main,
    reverse_gradient,
)
from vtagml.cli import PACKAGED_CONFIGS
from vtagml.data import Cityscapes
from vtagml.transfer import load_datamodule


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


def test_adapt_on_real_formats_never_reads_target_training_labels(tmp_path, tiny_checkpoint):
    """The shipped SYNTHIA -> Cityscapes config on tiny files in the published layouts; Cityscapes'
    train split has images only, so reading a target label in training would fail."""
    synthia = write_synthia(tmp_path / "RAND_CITYSCAPES", n=4)
    cityscapes = write_cityscapes(tmp_path / "cityscapes", "train", frames=3, labels=False)
    write_cityscapes(cityscapes, "val", frames=2)
    with pytest.raises(FileNotFoundError, match="semseg label not found"):
        Cityscapes(cityscapes, split="train", tasks=["semseg"])[0]
    config = yaml.safe_load((PACKAGED_CONFIGS / "adapt_synthia_cityscapes.yaml").read_text())
    model = make(tiny_checkpoint, tasks=("semseg", "depth"), num_classes=16).save_adapters(tmp_path / "model")
    config["model"] = str(model)
    for key, root in (("source_data", synthia), ("target_data", cityscapes)):
        # 6x8 images padded to 32x32 training crops (the discriminators downsample 16x)
        config[key]["init_args"].update(root=str(root), crop_size=[32, 32], scale_range=[1.0, 1.0], eval_size=None,
                                        batch_size=2, num_workers=0, pin_memory=False)
    config["source_data"]["init_args"]["dataset_kwargs"]["holdout"] = 2  # 4 images: 2 train, 2 val
    (tmp_path / "adapt.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "adapt"
    adapt_main(["--config", str(tmp_path / "adapt.yaml"), "--out", str(out), "--epochs", "1"])
    res = json.loads((out / "results.json").read_text())
    assert (res["source"], res["target"], res["epochs"], res["adv_weight"]) == ("synthia", "cityscapes", 1, 0.001)
    assert len(res["results"]) == 2 and all({"semseg/miou", "depth/rmse"} <= set(r) for r in res["results"].values())
    assert json.loads((out / "model" / "config.json").read_text())["task_names"] == ["semseg", "depth"]


def test_command_config_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nadv_wieght: 0.1\n")
    with pytest.raises(SystemExit):
        adapt_main(["--config", str(bad), "--out", str(tmp_path)])
    assert f"{bad}: unknown option(s) ['adv_wieght']" in capsys.readouterr().err
    spec = tmp_path / "data.yaml"
    spec.write_text("class_path: vtagml.data.FolderDataModule\ninit_args: {dataset: cityscapes, root: x, crop: 3}\n")
    with pytest.raises(ValueError, match=r"target_data .*data.yaml: FolderDataModule.init_args: .*'crop'"):
        load_datamodule(spec, [], "target_data")
    with pytest.raises(ValueError, match=r"source_data: expected a datamodule"):
        load_datamodule({"init_args": {}}, [], "source_data")


def test_novel_domain_report(tmp_path, tiny_checkpoint):
    saved = trained(tiny_checkpoint).save_adapters(tmp_path / "model")
    other = make(tiny_checkpoint).save_adapters(tmp_path / "other")
    out = tmp_path / "nd"
    novel_domain_main(["--model", str(saved), "--out", str(out), "--val-samples", "4", "--batch-size", "4",
                       "--adapted", str(other)])
    res = json.loads((out / "results.json").read_text())
    rows = res["results"]
    source, novel = rows["source domain a"], rows["novel domain b, no fine-tuning"]
    assert source != novel and set(source) == set(novel) >= {"semseg/miou", "depth/rmse", "normals/mean_angle", "edges/odsf"}
    assert rows["change (novel - source)"] == pytest.approx({k: novel[k] - source[k] for k in novel})
    assert rows["novel domain b, adapted (other)"] != novel  # another model, same novel-domain data
    assert "| novel domain b, no fine-tuning |" in (out / "results.md").read_text()
