"""Train a tiny VTAGML for a few steps with N CPU processes (gloo); save what was trained.

Used by tests/test_engine.py::test_ddp_matches_single_process:
``python -m tests.ddp_check --devices 2 --batch-size 2 --checkpoint W --out OUT [--rank1-without-edges]``.

With ``--rank1-without-edges`` the samples that process 1 holds carry no edge labels: under DDP
its batches never hold edges; on one process the same samples (odd positions of each global
batch, as DistributedSampler deals them) lack them.
"""

import argparse

import lightning as L
import torch
import torch.distributed as dist

import vtagml.data.datamodule
from tests.conftest import TINY_SWIN
from vtagml import VTAGML
from vtagml.data import SyntheticDataModule, collate_multitask
from vtagml.engine.module import MultitaskModule


def collate_rank1_without_edges(samples):
    distributed = dist.is_available() and dist.is_initialized()
    drop = [dist.get_rank() == 1] * len(samples) if distributed else [i % 2 == 1 for i in range(len(samples))]
    return collate_multitask([{k: v for k, v in s.items() if not (d and k == "edges")}
                              for s, d in zip(samples, drop)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rank1-without-edges", action="store_true")
    args = parser.parse_args()
    if args.rank1_without_edges:
        vtagml.data.datamodule.collate_multitask = collate_rank1_without_edges
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
