"""The ``vtagml`` command.

- ``vtagml demo [--out DIR]``: the main job on the embedded synthetic data (see :mod:`vtagml.demo`).
- ``vtagml fit|validate|test|predict --config FILE.yaml``: LightningCLI; ``--print_config`` works.
  ``--config`` takes a YAML file or the name of a config shipped with the package
  (``demo.yaml``, ``nyudv2_swin_b.yaml``, ``taskonomy_swinv2_b.yaml``; a file of that name in the
  current folder wins). One GPU: ``--trainer.accelerator gpu --trainer.devices 1``; DDP:
  ``--trainer.devices 4 --trainer.strategy ddp``. ``validate``, ``test`` and ``predict`` need
  ``--ckpt_path`` (a trained checkpoint). Predict writes per-task PNG and NPY files for a folder of
  images: ``vtagml predict --config FILE.yaml --ckpt_path CKPT --data.init_args.predict_dir IMAGES``.
  Checkpoints are written atomically (:class:`vtagml.engine.checkpoint.AtomicCheckpointIO`) unless
  ``--trainer.plugins`` names another checkpoint IO.
- ``vtagml data check --dataset nyudv2 --root DIR``: validate a dataset download.
- ``vtagml pretrain``: reproduce the demo backbone weights.
- ``vtagml benchmark``: baselines and ablations in one table (:mod:`vtagml.benchmark`).
- ``vtagml add-task`` / ``zero-shot`` (:mod:`vtagml.transfer`), ``vtagml adapt`` / ``novel-domain``
  (:mod:`vtagml.adaptation`): generalization on a saved model directory. ``validate``/``test``/
  ``predict`` take a saved model directory instead of ``--ckpt_path`` with ``model.net`` set to
  :class:`vtagml.SavedModel` (``nyudv2_to_taskonomy.yaml``, ``taskonomy_to_nyudv2.yaml``).
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from vtagml.data.datamodule import MultitaskDataModule
from vtagml.engine.module import MultitaskModule

#: Configs shipped with the package (package data), found by name from any folder.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
#: Subcommands that evaluate or apply a trained model.
_NEEDS_CHECKPOINT = {"validate": "validation metrics", "test": "test metrics", "predict": "predictions"}

USAGE = """usage: vtagml COMMAND [options]

commands:
  vtagml fit --config CONFIG                      train adapters, decoders and heads (LightningCLI)
  vtagml validate --config CONFIG --ckpt_path CKPT
                                                  metrics of a trained checkpoint on the validation split
  vtagml test --config CONFIG --ckpt_path CKPT    metrics of a trained checkpoint on the test split
  vtagml predict --config CONFIG --ckpt_path CKPT --data.init_args.predict_dir IMAGES [--predict_out OUT]
                                                  per-task PNG and NPY predictions for a folder of images
  vtagml demo [--out DIR]                         train and evaluate on the embedded synthetic scenes
  vtagml data check --dataset NAME --root DIR     validate a dataset download before a long run
  vtagml pretrain [--out FILE]                    reproduce the demo backbone weights
  vtagml benchmark --config PRESET [--methods ...] [--seeds N] --out DIR
                                                  baselines, ablations and Δm in one table
  vtagml add-task --model DIR --task NAME --out DIR
                                                  grow a saved model by a labelled task (others bit-identical)
  vtagml zero-shot --model DIR --task NAME (--prior T=W,... | --affinity-from DIR) --out DIR
                                                  compose a task without labels from the known ones
  vtagml adapt --model DIR --out DIR [--baselines] [--source-data YAML --target-data YAML | --config FILE]
                                                  unsupervised domain adaptation (default: synthetic a -> b)
  vtagml novel-domain --model DIR --out DIR [--target-domain b] [--adapted DIR] [--target-supervised DIR]
                                                  a saved model on its source and a novel domain, no fine-tuning
  vtagml test --config nyudv2_to_taskonomy.yaml --model.net.init_args.directory DIR
                                                  a saved model tested on another dataset (model.net: SavedModel)

CONFIG is a YAML file or the name of a packaged config: {configs}.
`vtagml fit --config demo.yaml --print_config` prints a full, editable configuration;
`vtagml COMMAND --help` lists a command's options.
"""


#: Commands implemented as ``main(argv)`` functions elsewhere in the package: name -> "module:function".
_MODULE_COMMANDS = {
    "pretrain": "vtagml.pretrain:main",
    "add-task": "vtagml.transfer:add_task_main",
    "zero-shot": "vtagml.transfer:zero_shot_main",
    "adapt": "vtagml.adaptation:adapt_main",
    "novel-domain": "vtagml.adaptation:novel_domain_main",
    "benchmark": "vtagml.benchmark:main",
}


def packaged_configs() -> list[str]:
    return sorted(p.name for p in PACKAGED_CONFIGS.glob("*.yaml"))


def _resolve_config(value: str) -> str:
    """A bare config name that is not a file here -> the packaged config of that name."""
    if not re.fullmatch(r"[\w.-]+", value) or Path(value).exists():
        return value  # a path (LightningCLI reports a missing one), inline YAML, or a local file
    for name in (value, f"{value}.yaml"):
        if (PACKAGED_CONFIGS / name).is_file():
            return str(PACKAGED_CONFIGS / name)
    if value.endswith((".yaml", ".yml")):
        raise SystemExit(f"vtagml: config {value!r} is neither a file in {Path.cwd()} nor a packaged config "
                         f"(packaged: {', '.join(packaged_configs())})")
    return value


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with the value of every ``--config``/``-c`` resolved by :func:`_resolve_config`."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--config") and i + 1 < len(args):
            out += [arg, _resolve_config(args[i + 1])]
            i += 2
            continue
        for flag in ("--config=", "-c="):
            if arg.startswith(flag):
                arg = flag + _resolve_config(arg[len(flag):])
                break
        out.append(arg)
        i += 1
    return out


def _loads_saved_model(config) -> bool:
    """Whether the configuration's model reads a saved model directory (:class:`vtagml.SavedModel`)."""
    net = config.get("model", {}).get("net")
    return str(getattr(net, "class_path", "")).endswith("SavedModel")


class VTAGMLCLI(LightningCLI):
    """LightningCLI whose data module declares the tasks and class count for the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.tasks", "model.net.init_args.tasks", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--predict_out", default="predictions", help="output folder of `predict`")

    def before_instantiate_classes(self) -> None:
        what = _NEEDS_CHECKPOINT.get(self.subcommand)
        config = self.config[self.subcommand] if what else None
        if what and config.get("ckpt_path") is None and not _loads_saved_model(config):
            raise SystemExit(f"vtagml {self.subcommand} needs --ckpt_path (a trained checkpoint, e.g. the "
                             f"checkpoints/*.ckpt that `vtagml fit` writes) or a saved model directory as "
                             f"model.net (class_path: vtagml.SavedModel); without either the heads are untrained "
                             f"and the {what} would be meaningless")

    def instantiate_trainer(self, **kwargs):
        """The trainer, saving checkpoints through :class:`AtomicCheckpointIO` unless the
        configuration names another checkpoint IO in ``trainer.plugins``."""
        from lightning.fabric.plugins import CheckpointIO

        from vtagml.engine.checkpoint import AtomicCheckpointIO

        config = self.config_init.get(str(self.subcommand), self.config_init)
        plugins = kwargs.pop("plugins", config.get("trainer", {}).get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def before_predict(self) -> None:
        from vtagml.engine.artifacts import PredictionWriter
        out = self.config[self.subcommand].get("predict_out", "predictions")
        self.trainer.callbacks.append(PredictionWriter(out))


def run_cli(args: list[str] | None = None) -> VTAGMLCLI:
    """LightningCLI on ``args`` (default: the command line); packaged configs are found by name."""
    if args is None:
        sys.argv[1:] = resolve_config_args(sys.argv[1:])  # LightningCLI reads sys.argv itself
    else:
        args = resolve_config_args(list(args))
    return VTAGMLCLI(MultitaskModule, MultitaskDataModule, subclass_mode_data=True, args=args,
                     save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command in ("", "-h", "--help", "help"):
        print(USAGE.format(configs=", ".join(packaged_configs())), end="", file=sys.stdout if command else sys.stderr)
        raise SystemExit(0 if command else 2)
    if command == "demo":
        from vtagml.demo import main as demo_main
        demo_main(rest)
    elif command == "data":
        if rest[:1] != ["check"]:
            if rest[:1] in (["-h"], ["--help"]):
                print("usage: vtagml data check --dataset NAME --root DIR  (vtagml data check --help: options)")
                raise SystemExit(0)
            raise SystemExit("usage: vtagml data check --dataset NAME --root DIR")
        from vtagml.data.check import main as check_main
        check_main(rest[1:])
    elif command in _MODULE_COMMANDS:
        module, function = _MODULE_COMMANDS[command].split(":")
        getattr(importlib.import_module(module), function)(rest)
    else:
        run_cli(None if argv is None else args)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
