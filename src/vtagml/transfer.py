"""Growing a trained model by tasks without retraining it (DESIGN.md section 8).

Commands on a saved model directory (:meth:`VTAGML.save_adapters`), each writing the grown model
directory, ``results.json`` and ``results.md`` to ``--out``:

- ``vtagml add-task``: a new task with labels; only its embedding, decoder and head train, every
  existing task's state (and so its outputs) stays bit-identical;
- ``vtagml zero-shot``: a new task without labels, composed from the known tasks by affinity
  weights (a prior by task name, or TROA measured by another model that has the task), compared
  with the single most affine known task, the plain mean and (optionally) an upper bound trained
  with the task's labels.

Data: the synthetic scenes by default (``--domain``, sizes), or any vtagml datamodule given as a
YAML ``{class_path, init_args}`` (``--data``); its ``tasks`` are set to the new task.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from vtagml.data.datamodule import MultitaskDataModule, SyntheticDataModule
from vtagml.data.io import atomic_write
from vtagml.engine.module import MultitaskModule
from vtagml.models.vtagml import VTAGML


# --------------------------------------------------------------------------- shared pieces


def load_datamodule(spec: str | Path | dict, tasks: list[str], where: str = "datamodule") -> MultitaskDataModule:
    """A vtagml datamodule from a YAML file (or its mapping) ``{class_path, init_args}``, loading
    only ``tasks``' labels (none: images only)."""
    if not isinstance(spec, dict):
        where = f"{where} {spec}"
        spec = yaml.safe_load(Path(spec).read_text())
    try:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except (KeyError, ImportError, AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"{where}: expected a datamodule {{class_path, init_args}}: {err!r}") from err
    try:
        return cls(**{**(spec.get("init_args") or {}), "tasks": list(tasks)})
    except TypeError as err:  # an init_args key the class does not take
        raise ValueError(f"{where}: {name}.init_args: {err}") from err


def build_data(args: argparse.Namespace, task: str) -> MultitaskDataModule:
    """The datamodule of ``--data`` (YAML) or the synthetic scenes, loading only ``task``'s labels."""
    if args.data is None:
        return SyntheticDataModule(tasks=[task], size=args.size, domain=args.domain, train_samples=args.train_samples,
                                   val_samples=args.val_samples, test_samples=args.val_samples, seed=args.seed,
                                   batch_size=args.batch_size)
    return load_datamodule(args.data, [task], "--data")


def _trainer(out: Path, epochs: int = 1, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, default_root_dir=out, logger=False,
                     enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def evaluate(net: VTAGML, data: MultitaskDataModule, out: Path) -> dict[str, float]:
    """Metrics of every labelled task of ``data``'s validation split, ``{"task/metric": value}``."""
    data.setup("validate")
    module = MultitaskModule(net, troa=False)
    _trainer(out, enable_progress_bar=False).test(module, dataloaders=data.val_dataloader(), verbose=False)
    return dict(module.last_test_metrics)


def load_model(args: argparse.Namespace) -> VTAGML:
    return VTAGML.from_adapters(args.model, checkpoint_path=args.backbone)


def _write_results(out: Path, results: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(table))
    print(table)


def model_parser(prog: str, doc: str, epochs: int | None = None, lr: float | None = None) -> argparse.ArgumentParser:
    """Options shared by the commands on a saved model: the model, output, backbone, synthetic data
    and (with ``epochs``) the training budget."""
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--config", type=Path, default=None,
                   help="YAML mapping of this command's options (e.g. 'epochs: 2'); flags given override it")
    p.add_argument("--model", type=Path, required=True, help="saved model directory (VTAGML.save_adapters)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--backbone", type=Path, default=None, help="backbone weights (default: as the model was saved)")
    p.add_argument("--size", type=int, default=64, help="synthetic image size")
    p.add_argument("--train-samples", type=int, default=1000)
    p.add_argument("--val-samples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    if epochs is not None:
        p.add_argument("--epochs", type=int, default=epochs)
        p.add_argument("--lr", type=float, default=lr)
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``argv`` parsed over the options of ``--config``: a YAML mapping whose keys are the options'
    names (``adv_weight``, ``source_data``...); flags given override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        values = yaml.safe_load(known.config.read_text()) or {}
        if not isinstance(values, dict):
            p.error(f"{known.config}: expected a mapping of options, got {type(values).__name__}")
        actions = {a.dest: a for a in p._actions if a.dest not in ("help", "config")}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            p.error(f"{known.config}: unknown option(s) {unknown}; options: {sorted(actions)}")
        for k, v in values.items():
            actions[k].required = False  # given by the config
            p.set_defaults(**{k: actions[k].type(v) if isinstance(v, str) and actions[k].type else v})
    return p.parse_args(argv)


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = model_parser(prog, doc, epochs=3, lr=4e-3)
    p.add_argument("--task", required=True, help="the new task's registered name (e.g. depth_zbuffer)")
    p.add_argument("--data", type=Path, default=None, help="datamodule YAML {class_path, init_args} (default: synthetic)")
    p.add_argument("--domain", default="a", help="synthetic appearance domain")
    return p


# --------------------------------------------------------------------------- add a task with labels


def train_new_task(net: VTAGML, task: str, data: MultitaskDataModule, epochs: int, lr: float, out: Path) -> float:
    """Train only ``task``'s embedding, decoder and head on ``data``; returns the wall time (s)."""
    handle = net.train_only(task)
    try:
        module = MultitaskModule(net, lr=lr, troa=False)
        start = time.time()
        _trainer(out, epochs, limit_val_batches=0, gradient_clip_val=1.0).fit(module, data)
        return time.time() - start
    finally:
        handle.remove()


def add_task(args: argparse.Namespace) -> dict:
    L.seed_everything(args.seed, workers=True)
    net = load_model(args)
    known = list(net.task_names)
    all_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    probe = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net.eval()(probe, tasks=known)
    net.add_task(args.task, num_classes=None)
    data = build_data(args, args.task)
    seconds = train_new_task(net, args.task, data, args.epochs, args.lr, args.out)
    trained = sum(p.numel() for n, p in net.named_parameters()
                  if n.startswith((f"decoders.{args.task}.", f"heads.{args.task}."))) + net.embed_dim
    with torch.no_grad():
        after = net.eval()(probe, tasks=known)
    identical = all(torch.equal(before[k], after[k]) for k in known)
    metrics = evaluate(net, data, args.out)
    net.save_adapters(args.out / "model")
    results = {"task": args.task, "known_tasks": known, "metrics": metrics, "train_seconds": round(seconds, 1),
               "trained_parameters": trained, "all_task_trainable_parameters": all_trainable,
               "existing_outputs_bit_identical": identical, "epochs": args.epochs, "train_samples": args.train_samples}
    table = "\n".join([f"# add-task {args.task}", "", "| metric | value |", "|---|---|",
                       *[f"| {k} | {v:.4f} |" for k, v in metrics.items()],
                       f"| trained parameters | {trained:,} (retraining all: {all_trainable:,}) |",
                       f"| training time | {seconds:.1f} s ({args.epochs} epochs, {args.train_samples} images) |",
                       f"| existing tasks' outputs bit-identical | {identical} |", ""])
    _write_results(args.out, results, table)
    return results


def add_task_main(argv: list[str] | None = None) -> None:
    p = _parser("vtagml add-task", "Grow a trained model by a labelled task; the existing tasks stay bit-identical.")
    add_task(parse_args(p, argv))


# --------------------------------------------------------------------------- zero-shot


def parse_prior(text: str) -> dict[str, float]:
    """``"depth=1,normals=0.25"`` -> ``{"depth": 1.0, "normals": 0.25}``.

    >>> parse_prior("depth=1, normals=0.25")
    {'depth': 1.0, 'normals': 0.25}
    """
    out = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"prior entry {part!r} is not TASK=WEIGHT")
        out[name.strip()] = float(value)
    return out


def measured_prior(source: VTAGML, task: str, known: list[str]) -> dict[str, float]:
    """``alpha_n`` from the TROA affinities of a model that has ``task``: the helpful share
    ``max(A[j, n], 0)`` of every known task j (DESIGN.md section 2's alpha restricted to known tasks)."""
    if task not in source.task_names:
        raise KeyError(f"the affinity source has no task {task!r}; it has {source.task_names}")
    a = source.task_affinity()
    n = source.task_names.index(task)
    return {j: max(float(a[source.task_names.index(j), n]), 0.0) for j in known if j in source.task_names}


def zero_shot(args: argparse.Namespace) -> dict:
    L.seed_everything(args.seed, workers=True)
    base = load_model(args)
    known = list(base.task_names)
    if args.affinity_from is not None:
        prior, source = measured_prior(VTAGML.from_adapters(args.affinity_from), args.task, known), str(args.affinity_from)
    else:
        prior, source = parse_prior(args.prior), "prior"
    top = max(prior, key=prior.get)
    variants = {f"composed ({source})": prior, f"most affine ({top})": {top: 1.0},
                "plain mean": {n: 1.0 for n in known}}
    data = build_data(args, args.task)
    rows = {}
    for name, weights in variants.items():
        net = copy.deepcopy(base)  # each variant from the same loaded model (one read of the backbone)
        try:
            net.add_task(args.task, composition=weights)
        except ValueError as err:  # e.g. no known task of the new task's kind among the weighted ones
            rows[name] = {"error": str(err)}
            continue
        rows[name] = evaluate(net, data, args.out)
        if name.startswith("composed"):
            net.save_adapters(args.out / "model")
    if args.upper_bound_epochs > 0:
        net = copy.deepcopy(base)
        net.add_task(args.task)
        train_new_task(net, args.task, data, args.upper_bound_epochs, args.lr, args.out)
        rows[f"trained with labels ({args.upper_bound_epochs} epochs)"] = evaluate(net, data, args.out)
    metrics = sorted({k for r in rows.values() for k in r if k != "error"})
    lines = [f"# zero-shot {args.task}", "", f"weights: {json.dumps(prior)}", "",
             "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, r in rows.items():
        cells = [f"{r[m]:.4f}" if m in r else r.get("error", "-") for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    results = {"task": args.task, "known_tasks": known, "weights": prior, "source": source, "results": rows}
    _write_results(args.out, results, "\n".join(lines) + "\n")
    return results


def zero_shot_main(argv: list[str] | None = None) -> None:
    p = _parser("vtagml zero-shot", "Compose a task without labels from a trained model's tasks by affinity weights.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prior", help="weights by known task name, e.g. 'depth=1,normals=0.2'")
    src.add_argument("--affinity-from", type=Path, help="a saved model that has the task: its TROA affinities")
    p.add_argument("--upper-bound-epochs", type=int, default=0, help="also train the task with labels (upper bound)")
    zero_shot(parse_args(p, argv))
