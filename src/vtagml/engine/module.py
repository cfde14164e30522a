"""LightningModule: multitask training with TROA affinities, split-level metrics, prediction.

Training step (one forward, one backward):

1. the frozen trunk encodes the batch once (no autograd) into z;
2. each task branch gets its own leaf copy of z, stacked as ``z_all`` (T*B, h, w, C);
3. branches predict, task losses (weighted) are summed and back-propagated by Lightning;
4. ``on_after_backward`` reads ``z_all.grad`` = the per-task gradients G_t and updates the
   model's affinity EMA with first-order TROA (``vtagml.affinity``). Every
   ``troa_exact_every`` steps the exact lookahead is evaluated on a sub-batch instead.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn

from vtagml.affinity import affinity_from_gram, exact_affinity, update_affinity_ema
from vtagml.models.vtagml import VTAGML, Encoded
from vtagml.tasks.metrics import multitask_gain


def task_losses(net: VTAGML, enc: Encoded, batch: dict, task_idx: list[int], z_all: Tensor | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Predictions and weighted losses ``{task: w_t * L_t}`` of the tasks ``task_idx``."""
    preds = net.forward_branches(enc, task_idx, z_all)
    present = batch.get("present", {})
    losses = {}
    for t in task_idx:
        task = net.tasks[t]
        losses[task.name] = task.weight * task.loss(preds[task.name], batch[task.name], present.get(task.name))
    return preds, losses


def branch_inputs(z: Tensor, num_tasks: int) -> Tensor:
    """Leaf copies of z for ``num_tasks`` branches, task-major (T*B, ...), requiring grad."""
    return z.detach().repeat(num_tasks, *([1] * (z.dim() - 1))).requires_grad_(True)


class MultitaskModule(L.LightningModule):
    """Trains a :class:`~vtagml.models.VTAGML` (or any model with its interface).

    Args:
        net: the multitask model.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        lr: learning rate.
        weight_decay: weight decay (not on biases, norms, embeddings; see ``no_weight_decay``).
        schedule: ``"cosine"`` (linear warmup then cosine), ``"onecycle"`` or ``"constant"``.
        warmup: warmup length, a fraction of all steps if < 1, else a step count.
        troa: measure task affinities and condition the model on them.
        troa_lr: lookahead step eta (default: ``lr``); affinities compare across runs only at equal eta.
        troa_momentum: EMA momentum of affinities.
        troa_exact_every: evaluate the exact lookahead every this many steps (0 = never).
        troa_exact_samples: sub-batch size of the exact lookahead.
        reference_metrics: single-task results ``{"task/metric": value}`` for the multitask gain.
    """

    def __init__(
        self,
        net: VTAGML,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        schedule: Literal["cosine", "onecycle", "constant"] = "cosine",
        warmup: float = 0.05,
        troa: bool = True,
        troa_lr: float | None = None,
        troa_momentum: float = 0.9,
        troa_exact_every: int = 0,
        troa_exact_samples: int = 2,
        reference_metrics: dict[str, float] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.val_metrics = nn.ModuleDict({t.name: t.build_metrics() for t in net.tasks})
        self.test_metrics = nn.ModuleDict({t.name: t.build_metrics() for t in net.tasks})
        self._troa_batch = None

    # ------------------------------------------------------------------ training
    def _labelled_tasks(self, batch: dict) -> list[int]:
        present = batch.get("present", {})
        return [i for i, t in enumerate(self.net.tasks)
                if t.name in batch and (t.name not in present or bool(present[t.name].any()))]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        idx = self._labelled_tasks(batch)
        if not idx:
            raise ValueError(f"batch has no label for any task of the model {self.net.task_names}")
        enc = self.net.encode(batch["image"])
        z_all = branch_inputs(enc.z, len(idx)) if self.hparams.troa else None
        _, losses = task_losses(self.net, enc, batch, idx, z_all)
        total = torch.stack(list(losses.values())).sum()
        bs = batch["image"].shape[0]
        self.log_dict({f"train/loss/{k}": v.detach() for k, v in losses.items()}, batch_size=bs)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        if self.hparams.troa:
            self._troa_batch = (enc, z_all, {k: v.detach() for k, v in losses.items()}, idx, batch)
        return total

    @property
    def troa_lr(self) -> float:
        return self.hparams.troa_lr if self.hparams.troa_lr is not None else self.hparams.lr

    def _grad_scale(self) -> float:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def on_after_backward(self) -> None:
        if self._troa_batch is None:
            return
        enc, z_all, losses, idx, batch = self._troa_batch
        self._troa_batch = None
        if z_all.grad is None:
            return
        num, b = len(idx), enc.z.shape[0]
        grads = (z_all.grad / self._grad_scale()).view(num, b, *enc.z.shape[1:])
        loss_vec = torch.stack([losses[self.net.task_names[t]] for t in idx]).double()
        exact_every = self.hparams.troa_exact_every
        if exact_every and self.global_step % exact_every == 0:
            step = self._exact_affinity(enc, batch, idx)
        else:
            flat = grads.reshape(num, -1).double()
            gram = flat @ flat.T
            if self._trainer is not None and self.trainer.world_size > 1:
                # global-batch gradients are local ones / world size; losses average over processes
                world = self.trainer.world_size
                gram = self.trainer.strategy.reduce(gram, reduce_op="sum") / world ** 2
                loss_vec = self.trainer.strategy.reduce(loss_vec, reduce_op="mean")
            step = affinity_from_gram(gram, loss_vec, self.troa_lr)
        measured_local = (loss_vec > 0).view(-1, 1) & (loss_vec > 0).view(1, -1)
        full = torch.zeros_like(self.net.affinity)
        measured = torch.zeros_like(self.net.affinity, dtype=torch.bool)
        ii = torch.tensor(idx, device=full.device)
        full[ii[:, None], ii[None, :]] = step.to(full)
        measured[ii[:, None], ii[None, :]] = measured_local.to(full.device)
        update_affinity_ema(self.net.affinity, self.net.affinity_counts, full, self.hparams.troa_momentum, measured)

    def _exact_affinity(self, enc: Encoded, batch: dict, idx: list[int]) -> Tensor:
        """Exact TAG lookahead on the first ``troa_exact_samples`` samples of the batch."""
        n = min(self.hparams.troa_exact_samples, enc.z.shape[0])
        sub = Encoded(z=enc.z[:n], skips=[s[:n] for s in enc.skips], image=enc.image[:n], size=enc.size)
        sub_batch = {k: (v[:n] if isinstance(v, Tensor) else v) for k, v in batch.items()}
        sub_batch["present"] = {k: v[:n] for k, v in batch.get("present", {}).items()}
        num = len(idx)
        with torch.enable_grad():
            z_all = branch_inputs(sub.z, num)
            _, losses = task_losses(self.net, sub, sub_batch, idx, z_all)
            (grads,) = torch.autograd.grad(torch.stack(list(losses.values())).sum(), [z_all])
        grads = grads.view(num, n, *sub.z.shape[1:])

        def losses_at(z: Tensor) -> Tensor:
            _, ls = task_losses(self.net, sub, sub_batch, idx, z.repeat(num, *([1] * (z.dim() - 1))))
            return torch.stack([ls[self.net.task_names[t]] for t in idx])

        return exact_affinity(losses_at, sub.z, grads, self.troa_lr)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict, metrics: nn.ModuleDict, prefix: str) -> None:
        idx = self._labelled_tasks(batch)
        if not idx:
            return
        enc = self.net.encode(batch["image"])
        preds, losses = task_losses(self.net, enc, batch, idx)
        present = batch.get("present", {})
        for t in idx:
            task = self.net.tasks[t]
            task.update_metrics(metrics[task.name], preds[task.name], batch[task.name], present.get(task.name))
        bs = batch["image"].shape[0]
        self.log_dict({f"{prefix}/loss/{k}": v for k, v in losses.items()}, batch_size=bs, sync_dist=True)
        self.log(f"{prefix}/loss", torch.stack(list(losses.values())).sum(), batch_size=bs, sync_dist=True)

    def _log_epoch_metrics(self, metrics: nn.ModuleDict, prefix: str) -> dict[str, float]:
        values = {}
        for task_name, group in metrics.items():
            for name, metric in group.items():
                if not metric.update_called:
                    continue
                values[f"{task_name}/{name}"] = float(metric.compute())
                metric.reset()
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, sync_dist=False)
        ref = self.hparams.reference_metrics
        if ref and all(k in values for k in ref):
            direction = {f"{t}/{n}": bool(m.higher_is_better) for t, g in metrics.items() for n, m in g.items()}
            self.log(f"{prefix}/delta_m", multitask_gain(values, ref, direction))
        return values

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics, "val")
        names = self.net.task_names
        self.log_dict({f"troa/{names[i]}->{names[j]}": float(self.net.affinity[i, j])
                       for i in range(len(names)) for j in range(len(names))})

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_epoch_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        preds = self.net(batch["image"])
        names = batch.get("name") or [f"{batch_idx:06d}_{i}" for i in range(batch["image"].shape[0])]
        return {"name": list(names), "labels": {t.name: t.to_label(preds[t.name]).cpu() for t in self.net.tasks}}

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        no_decay = self.net.no_weight_decay()
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n not in no_decay], "weight_decay": self.hparams.weight_decay},
                  {"params": [p for n, p in named if n in no_decay], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if self.hparams.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=self.hparams.lr, momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, lr=self.hparams.lr)
        if self.hparams.schedule == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.hparams.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=total,
                                                        pct_start=max(self.hparams.warmup, 1e-3))
        else:
            w = self.hparams.warmup
            warm = max(1, int(w * total) if w < 1 else int(w))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / total))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

