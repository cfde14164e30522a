"""Train a tiny VTAGML for a few steps with N CPU processes (gloo); save what was trained.

Used by tests/test_engine.py::test_ddp_matches_single_process:
``python -m tests.ddp_check --devices 2 --batch-size 2 --checkpoint W --out OUT``.
"""

import argparse

import lightning as L
import torch
from tests.conftest import TINY_SWIN
from vtagml import VTAGML
from vtagml.data import SyntheticDataModule
from vtagml.engine.module import MultitaskModule


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    L.seed_everything(0)
    tasks = ("semseg", "depth", "normals", "edges")
    net = VTAGML(TINY_SWIN["name"], tasks=tasks, num_classes=6, img_size=64, checkpoint_path=args.checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16)
    module = MultitaskModule(net, optimizer="sgd", lr=0.05, schedule="constant", troa=True)
    data = SyntheticDataModule(tasks=tasks, size=64, train_samples=8, val_samples=2, batch_size=args.batch_size,
                               seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, data)
    if trainer.is_global_zero:
        torch.save(net.trainable_state_dict(), args.out)


if __name__ == "__main__":
    main()
