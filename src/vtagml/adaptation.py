"""Unsupervised domain adaptation: labelled source, unlabelled target, same tasks (DESIGN.md section 8).

Output-space adversarial training: one small fully-convolutional discriminator per task tells
source predictions (label 1) from target predictions (label 0). Discriminators see detached
source predictions and target predictions through a gradient reversal layer, so one backward
trains them to tell the domains apart while the model (adapters, decoders, heads) learns to make
its target predictions look like source ones. Source losses drive the supervised part and TROA
(the adversarial gradient reaches the target branches only, never the source embedding copies).

``vtagml adapt`` starts from a saved model directory (trained on the source) and writes the
adapted model, ``results.json`` and ``results.md`` (target metrics of source-only, adapted and,
optionally, target-supervised fine-tuning at the same budget). ``vtagml novel-domain`` evaluates a
saved model on its source and a novel domain without any training. Source and target are synthetic
domains (``--source-domain``, ``--target-domain``) or datamodule YAMLs (``--source-data``,
``--target-data``); every option can come from ``--config FILE`` (e.g. ``adapt_synthia_cityscapes.yaml``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn

from vtagml.data.datamodule import MultitaskDataModule, SyntheticDataModule
from vtagml.engine.module import MultitaskModule
from vtagml.models.vtagml import VTAGML
from vtagml.tasks import Task
from vtagml.transfer import _write_results, evaluate, load_datamodule, model_parser, parse_args


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; the backward multiplies the gradient by ``-scale``."""
    return _ReverseGrad.apply(x, scale)


def discriminator_input(task: Task, pred: Tensor) -> Tensor:
    """A task's prediction as a bounded map the discriminator reads (B, C, H, W): class
    probabilities, log depth, unit normals, edge probabilities."""
    if task.kind == "classes":
        return pred.float().softmax(dim=1)
    if task.kind == "depth":
        return pred.float().clamp_min(1e-3).log()
    if task.kind == "edges":
        return pred.float().sigmoid()
    return pred.float()


class OutputDiscriminator(nn.Module):
    """Fully convolutional domain classifier on a prediction map (AdaptSegNet-style, small).

    (B, C, H, W) -> (B, 1, H/16, W/16) logits: 4 strided 4x4 convolutions with LeakyReLU, then a
    3x3 classifier.
    """

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        layers, c = [], in_channels
        for i in range(4):
            layers += [nn.Conv2d(c, width * 2 ** i, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c = width * 2 ** i
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def adversarial_loss(disc: nn.Module, source: Tensor, target: Tensor, reverse_scale: float) -> Tensor:
    """Discriminator BCE on detached source maps (label 1) and gradient-reversed target maps (label 0).

    Minimizing it trains ``disc``; the target maps receive ``-reverse_scale`` times its gradient,
    i.e. the model is pushed to make target predictions look like source ones.
    """
    d_src = disc(source.detach())
    d_tgt = disc(reverse_gradient(target, reverse_scale))
    return (F.binary_cross_entropy_with_logits(d_src, torch.ones_like(d_src))
            + F.binary_cross_entropy_with_logits(d_tgt, torch.zeros_like(d_tgt))) / 2


class AdaptationModule(MultitaskModule):
    """:class:`MultitaskModule` trained on ``{"source": batch, "target": batch}`` pairs.

    Args:
        net: the model (trained on the source, typically).
        adv_weight: scale of the reversed adversarial gradient that reaches the model (the
            discriminators learn from their loss unweighted).
        disc_width: discriminator width.
        **kwargs: :class:`MultitaskModule` options.
    """

    def __init__(self, net: VTAGML, adv_weight: float = 0.01, disc_width: int = 32, **kwargs):
        super().__init__(net, **kwargs)
        self.save_hyperparameters(ignore=["net"])
        self.discriminators = nn.ModuleDict({t.name: OutputDiscriminator(t.channels, disc_width) for t in net.tasks})

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        source, target = batch["source"], batch["target"]
        supervised, src_preds = self.supervised_step(source, batch_idx)  # source losses, TROA state
        tgt_preds = self.net(target["image"])  # target labels are never read
        adv = {}
        for task in self.net.tasks:
            adv[task.name] = adversarial_loss(self.discriminators[task.name], discriminator_input(task, src_preds[task.name]),
                                              discriminator_input(task, tgt_preds[task.name]), self.hparams.adv_weight)
        self.log_dict({f"train/adv/{k}": v.detach() for k, v in adv.items()}, batch_size=target["image"].shape[0])
        # the discriminators learn from their loss at full rate; the model gets -adv_weight times its
        # gradient through the reversal (weighting the loss too would scale the model's by adv_weight^2)
        return supervised + torch.stack(list(adv.values())).sum()

    def parameter_groups(self) -> list[dict]:
        return super().parameter_groups() + [{"params": list(self.discriminators.parameters()), "weight_decay": 0.0}]


class SourceTargetDataModule(L.LightningDataModule):
    """Training pairs of a labelled source batch and a target batch of images only (build ``target``
    without tasks, so that no target label is ever read in training)."""

    def __init__(self, source: MultitaskDataModule, target: MultitaskDataModule):
        super().__init__()
        self.source, self.target = source, target

    def setup(self, stage: str | None = None) -> None:
        self.source.setup("fit")
        self.target.setup("fit")

    def train_dataloader(self):
        return CombinedLoader({"source": self.source.train_dataloader(), "target": self.target.train_dataloader()},
                              mode="max_size_cycle")


# --------------------------------------------------------------------------- the command


def _fit(net: VTAGML, module_cls, data, epochs: int, lr: float, out: Path, **kw) -> float:
    module = module_cls(net, lr=lr, **kw)
    start = time.time()
    L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, default_root_dir=out, logger=False,
              enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
              gradient_clip_val=1.0).fit(module, data)
    return time.time() - start


def domain_data(args: argparse.Namespace, tasks: list[str]) -> dict[str, MultitaskDataModule]:
    """``source`` (labelled), ``target images`` (no tasks: labels never read) and ``target`` (its labels,
    for evaluation and the target-supervised bound): ``--source-data``/``--target-data`` datamodule
    YAMLs, or the synthetic domains."""
    if (args.source_data is None) != (args.target_data is None):
        raise ValueError("give both --source-data and --target-data (datamodule YAMLs), or neither (synthetic domains)")
    if args.source_data is not None:
        return {"source": load_datamodule(args.source_data, tasks, "source_data"),
                "target images": load_datamodule(args.target_data, [], "target_data"),
                "target": load_datamodule(args.target_data, tasks, "target_data")}

    def synthetic(domain, wanted):
        return SyntheticDataModule(tasks=wanted, size=args.size, domain=domain, train_samples=args.train_samples,
                                   val_samples=args.val_samples, test_samples=args.val_samples, seed=args.seed,
                                   batch_size=args.batch_size)

    return {"source": synthetic(args.source_domain, tasks), "target images": synthetic(args.target_domain, []),
            "target": synthetic(args.target_domain, tasks)}


def domain_names(args: argparse.Namespace) -> tuple[str, str]:
    """The source's and target's names: synthetic domains, datasets of inline specs or YAML file stems."""
    if args.source_data is None:
        return args.source_domain, args.target_domain
    name = lambda spec: spec.get("init_args", {}).get("dataset", "data") if isinstance(spec, dict) else spec.stem  # noqa: E731
    return name(args.source_data), name(args.target_data)


def table(title: str, rows: dict[str, dict]) -> str:
    """A markdown table of ``{row name: {metric: value}}``, one column per metric."""
    metrics = sorted({k for r in rows.values() for k in r})
    lines = [f"# {title}", "", "| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {name} | " + " | ".join(f"{r[m]:.4f}" if m in r else "-" for m in metrics) + " |"
              for name, r in rows.items()]
    return "\n".join(lines) + "\n"


def adapt(args: argparse.Namespace) -> dict:
    L.seed_everything(args.seed, workers=True)

    loaded = VTAGML.from_adapters(args.model, checkpoint_path=args.backbone)

    def model():  # a fresh copy of the source model for each run (the backbone is read once)
        return copy.deepcopy(loaded)

    tasks = loaded.task_names
    data = domain_data(args, tasks)
    source_name, target_name = domain_names(args)
    rows, seconds = {}, {}
    rows["source only (as trained)"] = evaluate(model(), data["target"], args.out)
    if args.baselines:
        net = model()
        seconds["source only"] = _fit(net, MultitaskModule, data["source"], args.epochs, args.lr, args.out)
        rows[f"source only (+{args.epochs} epochs on source)"] = evaluate(net, data["target"], args.out)
    net = model()
    seconds["adapted"] = _fit(net, AdaptationModule, SourceTargetDataModule(data["source"], data["target images"]),
                              args.epochs, args.lr, args.out, adv_weight=args.adv_weight)
    rows[f"adapted (+{args.epochs} epochs)"] = evaluate(net, data["target"], args.out)
    net.save_adapters(args.out / "model")
    if args.baselines:
        upper = model()
        seconds["target supervised"] = _fit(upper, MultitaskModule, data["target"], args.epochs, args.lr, args.out)
        rows[f"target supervised (+{args.epochs} epochs, upper bound)"] = evaluate(upper, data["target"], args.out)
    results = {"source": source_name, "target": target_name, "tasks": tasks, "results": rows,
               "train_seconds": {k: round(v, 1) for k, v in seconds.items()}, "epochs": args.epochs,
               "adv_weight": args.adv_weight}
    _write_results(args.out, results, table(f"adapt {source_name} -> {target_name} (target validation split)", rows))
    return results


def add_domain_options(p: argparse.ArgumentParser) -> None:
    """Source and target: datamodule YAMLs (real data) or synthetic domains."""
    p.add_argument("--source-data", type=Path, default=None, help="labelled source: datamodule YAML {class_path, init_args}")
    p.add_argument("--target-data", type=Path, default=None,
                   help="target datamodule YAML; training reads its images only, evaluation its val split's labels")
    p.add_argument("--source-domain", default="a", help="synthetic domain with labels (without --source-data)")
    p.add_argument("--target-domain", default="b", help="synthetic target domain (without --target-data)")


def adapt_main(argv: list[str] | None = None) -> None:
    p = model_parser("vtagml adapt", __doc__.split("\n\n")[0], epochs=2, lr=1e-3)
    add_domain_options(p)
    p.add_argument("--adv-weight", type=float, default=0.01)
    p.add_argument("--baselines", action="store_true",
                   help="also fine-tune on the source only and on target labels (upper bound) at the same budget")
    adapt(parse_args(p, argv))


# --------------------------------------------------------------------------- novel domain, no fine-tuning


def novel_domain(args: argparse.Namespace) -> dict:
    """Metrics of a saved model on its source domain and on a novel one as it is (DESIGN.md section 8),
    beside adapted and target-supervised models when their directories are given."""
    L.seed_everything(args.seed, workers=True)
    start = time.time()
    net = VTAGML.from_adapters(args.model, checkpoint_path=args.backbone)
    data = domain_data(args, net.task_names)
    source_name, target_name = domain_names(args)
    rows = {f"source domain {source_name}": evaluate(net, data["source"], args.out),
            f"novel domain {target_name}, no fine-tuning": evaluate(net, data["target"], args.out)}
    source, novel = rows.values()
    rows["change (novel - source)"] = {k: novel[k] - source[k] for k in novel if k in source}
    for label, directory in (("adapted", args.adapted), ("target supervised", args.target_supervised)):
        if directory is not None:
            other = VTAGML.from_adapters(directory, checkpoint_path=args.backbone)
            rows[f"novel domain {target_name}, {label} ({directory.name})"] = evaluate(other, data["target"], args.out)
    seconds = time.time() - start
    results = {"model": str(args.model), "source": source_name, "target": target_name, "tasks": net.task_names,
               "results": rows, "seconds": round(seconds, 1)}
    title = f"novel domain: {args.model} on {source_name} (its source) and {target_name}, validation splits"
    _write_results(args.out, results, table(title, rows) + f"\n{seconds:.0f} s\n")
    return results


def novel_domain_main(argv: list[str] | None = None) -> None:
    p = model_parser("vtagml novel-domain", novel_domain.__doc__.split("\n")[0])
    add_domain_options(p)
    p.add_argument("--adapted", type=Path, default=None, help="also evaluate this saved model (e.g. `vtagml adapt`'s)")
    p.add_argument("--target-supervised", type=Path, default=None,
                   help="also evaluate this saved model trained with the novel domain's labels (upper bound)")
    novel_domain(parse_args(p, argv))
