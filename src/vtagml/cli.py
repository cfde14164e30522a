"""The ``vtagml`` command.

- ``vtagml demo [--out DIR]``: the main job on the embedded synthetic data (see :mod:`vtagml.demo`).
- ``vtagml fit|validate|test|predict --config FILE.yaml``: LightningCLI; ``--print_config`` works.
  One GPU: ``--trainer.accelerator gpu --trainer.devices 1``; DDP: ``--trainer.devices 4
  --trainer.strategy ddp``. Predict writes per-task PNG and NPY files for a folder of images:
  ``vtagml predict --config FILE.yaml --ckpt_path CKPT --data.predict_dir IMAGES``.
- ``vtagml data check --dataset nyudv2 --root DIR``: validate a dataset download.
- ``vtagml pretrain``: reproduce the demo backbone weights.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from vtagml.data.datamodule import MultitaskDataModule
from vtagml.engine.module import MultitaskModule


class VTAGMLCLI(LightningCLI):
    """LightningCLI whose data module declares the tasks and class count for the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.tasks", "model.net.init_args.tasks", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--predict_out", default="predictions", help="output folder of `predict`")

    def before_predict(self) -> None:
        from vtagml.engine.artifacts import PredictionWriter
        out = self.config[self.subcommand].get("predict_out", "predictions")
        self.trainer.callbacks.append(PredictionWriter(out))


def run_cli(args: list[str] | None = None) -> VTAGMLCLI:
    """LightningCLI on ``args`` (default: the command line)."""
    return VTAGMLCLI(MultitaskModule, MultitaskDataModule, subclass_mode_data=True, args=args,
                     save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "demo":
        from vtagml.demo import main as demo_main
        demo_main(rest)
    elif command == "data":
        if rest[:1] != ["check"]:
            raise SystemExit("usage: vtagml data check --dataset NAME --root DIR")
        from vtagml.data.check import main as check_main
        check_main(rest[1:])
    elif command == "pretrain":
        from vtagml.pretrain import main as pretrain_main
        pretrain_main(rest)
    else:
        run_cli(None if argv is None else args)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
