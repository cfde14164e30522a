"""Training engine: TROA in the loop, checkpoints and exact resume, DDP, CLI, predict."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tests.conftest import TINY_SWIN
from vtagml import VTAGML
from vtagml.cli import run_cli
from vtagml.data import SyntheticDataModule
from vtagml.engine.artifacts import AffinityArtifacts
from vtagml.engine.module import MultitaskModule
from tests.test_real_datasets import nyud, taskonomy  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("semseg", "depth", "normals", "edges")


def tiny_module(checkpoint, **kw):
    net = VTAGML(TINY_SWIN["name"], tasks=TASKS, num_classes=6, img_size=64, checkpoint_path=checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16)
    return MultitaskModule(net, lr=5e-3, **kw)


def tiny_data(**kw):
    kw = dict(tasks=TASKS, size=64, train_samples=8, val_samples=4, test_samples=4, batch_size=4) | kw
    return SyntheticDataModule(**kw)


def trainer(tmp_path, **kw):
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              num_sanity_val_steps=0, default_root_dir=tmp_path) | kw
    return L.Trainer(**kw)


class StopAfterFirstEpoch(Callback):
    """Emulates an interrupted run (same schedule, ends after epoch 1)."""

    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


class LossRecorder(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_fit_updates_affinity_and_writes_artifacts(tmp_path, tiny_checkpoint):
    L.seed_everything(0)
    module = tiny_module(tiny_checkpoint)
    t = trainer(tmp_path, max_epochs=2, callbacks=[AffinityArtifacts(tmp_path)], enable_checkpointing=False)
    t.fit(module, tiny_data())
    net = module.net
    assert torch.all(net.troa.counts == 4)  # 2 epochs x 2 steps, every pair measured
    affinity = net.task_affinity()
    assert not torch.equal(affinity, torch.eye(4))
    torch.testing.assert_close(affinity.diagonal(), torch.ones(4))  # scale-free: a task's own step is 1
    assert affinity.abs().max() <= 1.0
    rows = list(csv.reader(open(tmp_path / "affinity.csv")))
    assert rows[0] == ["from \\ to", *TASKS] and len(rows) == 5
    np.testing.assert_allclose(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), affinity.numpy(), rtol=1e-5)
    assert (tmp_path / "affinity.png").stat().st_size > 1000
    metrics = t.callback_metrics
    for key in ("val/semseg/miou", "val/depth/rmse", "val/normals/mean_angle", "val/edges/odsf", "troa/depth->normals"):
        assert key in metrics, key
    t.test(module, tiny_data())
    assert set(module.last_test_metrics) >= {"semseg/miou", "depth/delta1", "edges/odsf"}


def test_modulation_parameters_train_at_their_lr_multiplier(tiny_checkpoint):
    """TSN deltas and TAA get lr * modulation_lr; weight decay still follows no_weight_decay."""
    module = tiny_module(tiny_checkpoint, modulation_lr=0.1, weight_decay=0.05, schedule="constant")
    opt = module.configure_optimizers()
    assert opt.defaults["fused"]  # one kernel for every tensor (fp32 here)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    params = dict(module.net.named_parameters())
    assert setting[id(params["adapters.0.tsn1.delta_scale.weight"])] == pytest.approx((5e-4, 0.05))
    assert setting[id(params["adapters.0.bottleneck.norm.delta_shift.bias"])] == pytest.approx((5e-4, 0.0))
    assert setting[id(params["adapters.0.taa.pattern"])] == pytest.approx((5e-4, 0.0))
    assert setting[id(params["adapters.0.bottleneck.down.weight"])] == pytest.approx((5e-3, 0.05))
    assert setting[id(params["embeddings.weight"])] == pytest.approx((5e-3, 0.0))
    assert {id(p) for p in module.net.parameters() if p.requires_grad} == set(setting)


def test_first_order_troa_adds_no_backward_pass(tmp_path, tiny_checkpoint):
    counts = {}
    for exact_every in (0, 1):
        module = tiny_module(tiny_checkpoint, troa_exact_every=exact_every)
        calls = []
        module.net.heads["depth"].register_full_backward_hook(lambda *a: calls.append(1))
        trainer(tmp_path, max_steps=2, enable_checkpointing=False, limit_val_batches=0).fit(module, tiny_data())
        counts[exact_every] = len(calls)
    assert counts[0] == 2  # one backward per training step, TROA included
    assert counts[1] == counts[0]  # the exact lookahead reuses the training gradients too


def test_bf16_mixed_precision_trains_with_troa(tmp_path, tiny_checkpoint):
    module = tiny_module(tiny_checkpoint)
    frozen = module.net.trunk["patch_embed"].proj.weight.clone()
    trainer(tmp_path, max_steps=2, precision="bf16-mixed", enable_checkpointing=False, limit_val_batches=0).fit(
        module, tiny_data())
    assert torch.isfinite(module.net.task_affinity()).all() and torch.all(module.net.troa.counts == 2)
    assert torch.equal(module.net.trunk["patch_embed"].proj.weight, frozen)


def test_bf16_mixed_precision_clips_gradients_of_the_fused_optimizer(tmp_path, tiny_checkpoint):
    """Lightning's mixed-precision plugin refuses to clip for a fused AdamW; bf16 has no loss
    scaler, so the module clips itself: the step runs and sees gradients of norm <= the clip."""
    norms = []

    class Recording(MultitaskModule):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            norms.append((float(before), float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))))

    net = tiny_module(tiny_checkpoint).net
    module = Recording(net, lr=5e-3)
    trainer(tmp_path, max_steps=2, precision="bf16-mixed", gradient_clip_val=1e-3, enable_checkpointing=False,
            limit_val_batches=0).fit(module, tiny_data())
    assert module.optimizers().optimizer.defaults["fused"]
    assert len(norms) == 2
    for before, after in norms:
        assert before > 1e-3 and after == pytest.approx(1e-3, rel=1e-3)


def test_resume_continues_with_identical_losses(tmp_path, tiny_checkpoint):
    L.seed_everything(0)
    full = LossRecorder()
    trainer(tmp_path / "a", max_epochs=3, callbacks=[full], enable_checkpointing=False,
            limit_val_batches=0).fit(tiny_module(tiny_checkpoint), tiny_data())

    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = LossRecorder()
    trainer(tmp_path / "b", max_epochs=3, callbacks=[first, ckpt, StopAfterFirstEpoch()], limit_val_batches=0).fit(
        tiny_module(tiny_checkpoint), tiny_data())
    L.seed_everything(123)  # the resumed run must not depend on the global RNG
    resumed = LossRecorder()
    module = tiny_module(tiny_checkpoint)
    trainer(tmp_path / "c", max_epochs=3, callbacks=[resumed], limit_val_batches=0).fit(
        module, tiny_data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert first.losses == full.losses[:2]
    assert resumed.losses == full.losses[2:]


@pytest.mark.timeout(400)
def test_ddp_matches_single_process(tmp_path, tiny_checkpoint):
    """2 gloo processes train exactly like 1 process on the same global batches, here with one
    process whose batches never hold edges (same collectives on every rank: no hang; losses
    normalized by global label counts)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    flag = ["--rank1-without-edges"]
    for devices, batch in ((2, 2), (1, 4)):
        out = tmp_path / f"ddp{devices}.pt"
        subprocess.run([sys.executable, "-m", "tests.ddp_check", "--devices", str(devices), "--batch-size",
                        str(batch), "--checkpoint", str(tiny_checkpoint), "--out", str(out), *flag],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=180)
    two, one = torch.load(tmp_path / "ddp2.pt", weights_only=True), torch.load(tmp_path / "ddp1.pt", weights_only=True)
    assert set(two) == set(one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-5, msg=k)
    assert not torch.equal(one["troa.affinity"], torch.eye(4))
    assert torch.all(one["troa.counts"] == 3)  # edges measured on every step (process 0 holds them)


def test_cli_fit_and_predict_through_argv(tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / "b.jpg")
    common = [
        "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.net.init_args.checkpoint_path", str(tiny_checkpoint),
        "--model.net.init_args.backbone_kwargs", str(TINY_SWIN["kwargs"]).replace("(", "[").replace(")", "]"),
        "--model.net.init_args.adapt_last_k", "2",
        "--data.init_args.train_samples", "4", "--data.init_args.val_samples", "2", "--data.init_args.batch_size", "2",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
    ]
    cli = run_cli(["fit", *common, "--trainer.max_epochs", "1"])
    assert cli.model.net.task_names == list(TASKS)  # linked from the data module
    assert cli.model.net.tasks[0].channels == 6
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    run_cli(["predict", *common, "--ckpt_path", str(ckpt), "--data.init_args.predict_dir", str(images),
             "--predict_out", str(tmp_path / "out")])
    for name, shape in (("a", (50, 70)), ("b", (64, 64))):
        for task in TASKS:
            assert (tmp_path / "out" / name / f"{task}.png").exists()
        seg = np.load(tmp_path / "out" / name / "semseg.npy")
        assert seg.shape == shape and seg.max() < 6
        normals = np.load(tmp_path / "out" / name / "normals.npy")
        np.testing.assert_allclose(np.linalg.norm(normals, axis=0), 1.0, atol=1e-4)
        assert Image.open(tmp_path / "out" / name / "depth.png").size == shape[::-1]


TINY_BACKBONE = ["--model.net.init_args.backbone", TINY_SWIN["name"], "--model.net.init_args.pretrained", "false",
                 "--model.net.init_args.backbone_kwargs",
                 str(TINY_SWIN["kwargs"]).replace("(", "[").replace(")", "]"),
                 "--model.net.init_args.adapt_last_k", "2", "--model.net.init_args.img_size", "64",
                 "--model.net.init_args.decoder_channels", "16", "--model.net.init_args.embed_dim", "8"]


#: configs of other commands, run by their own tests: benchmark presets (test_benchmark), `vtagml adapt`
#: (test_adaptation), `vtagml test` of a saved model on another dataset (test_novel_domain)
NOT_FIT_CONFIGS = ("benchmark_", "adapt_", "nyudv2_to_", "taskonomy_to_")


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                                           if not p.name.startswith(NOT_FIT_CONFIGS)))
def test_every_shipped_config_runs_one_step(config, tmp_path, request):
    """Each YAML under configs/ trains one step (fast_dev_run) as shipped, except that the
    backbone is a tiny random Swin (no hub here) and data is a tiny copy in the real layout."""
    args = ["fit", "--config", str(ROOT / "configs" / config), "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.precision", "32-true"]
    if not config.startswith("demo"):  # the demo's small backbone weights ship in the repo
        args += TINY_BACKBONE
    if config.startswith("nyudv2"):
        args += ["--data.init_args.root", str(request.getfixturevalue("nyud"))]
    elif config.startswith("taskonomy"):
        root = request.getfixturevalue("taskonomy")
        args += ["--data.init_args.root", str(root), "--data.init_args.dataset_kwargs",
                 f"{{split_csv: {root / 'splits.csv'}}}"]
    if not config.startswith("demo"):
        args += ["--data.init_args.crop_size", "[64, 64]", "--data.init_args.eval_size", "[64, 64]",
                 "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2"]
    cli = run_cli(args)
    assert cli.trainer.state.finished
    assert cli.model.net.task_names == list(cli.datamodule.tasks)


def test_demo_config_matches_the_demo():
    """configs/demo.yaml describes what `vtagml demo` runs."""
    import yaml
    from vtagml.demo import build_demo
    from vtagml.pretrain import DEMO_BACKBONE

    cfg = yaml.safe_load(open(ROOT / "configs" / "demo.yaml"))
    module, dm = build_demo()
    net_args = cfg["model"]["net"]["init_args"]
    assert net_args["backbone"] == DEMO_BACKBONE["name"] and net_args["img_size"] == DEMO_BACKBONE["img_size"]
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in net_args["backbone_kwargs"].items()} \
        == DEMO_BACKBONE["kwargs"]
    assert net_args["embed_dim"] == module.net.embed_dim and net_args["adapt_last_k"] == module.net.num_third
    from vtagml.demo import DEMO_NET
    assert {k: net_args[k] for k in DEMO_NET} == DEMO_NET
    from vtagml.demo import DEMO_EPOCHS
    assert cfg["model"]["lr"] == module.hparams.lr and cfg["trainer"]["max_epochs"] == DEMO_EPOCHS
    assert cfg["model"]["trunk_cache_gb"] == module.hparams.trunk_cache_gb > 0
    data = cfg["data"]["init_args"]
    assert data["batch_size"] == dm.batch_size and data["train_samples"] == dm.sizes["train"]
    assert data["tasks"] == dm.tasks


def test_images_as_uint8_or_out_of_range_floats(tiny_checkpoint):
    net = tiny_module(tiny_checkpoint).net.eval()
    pixels = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a, b = net(pixels), net(pixels.float() / 255)
    for k in TASKS:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match=r"\[0, 1\].*got values in \[0, 255\]"):
        net(pixels.float())
    with pytest.raises(ValueError, match="dtype"):
        net(pixels.long())
    nan = pixels.float() / 255
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="nan"):
        net(nan)


class NaNPixelOnStep(Callback):
    """Puts one NaN edge label (edges have no invalid pixels) into the batch of training step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch["edges"][0, 0, 3, 5] = float("nan")


def test_non_finite_loss_stops_training_before_the_weights_change(tmp_path, tiny_checkpoint):
    module = tiny_module(tiny_checkpoint)
    t = trainer(tmp_path, max_steps=4, enable_checkpointing=False, limit_val_batches=0, callbacks=[NaNPixelOnStep(1)])
    before = {}

    class Snapshot(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 1:
                before.update({n: p.detach().clone() for n, p in module.net.named_parameters() if p.requires_grad})

    t.callbacks.append(Snapshot())
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['edges'\] at step 1"):
        t.fit(module, tiny_data())
    for n, p in module.net.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[n]), n
    assert torch.isfinite(module.net.task_affinity()).all()


#: operators that read a tensor's value on the host: on an accelerator each one waits for the device
HOST_READS = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero",
              "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive"}


class HostReads(Callback):
    """Profiles one whole training step (forward, losses, logging, backward, TROA update, the hooks
    before the optimizer step, the step) and records each host read with the Python functions it ran
    in, innermost first."""

    def __init__(self, step: int = 1):
        self.step, self.reads, self._profiler = step, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.step:
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=True)
            self._profiler.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        for event in self._profiler.events():
            if event.name in HOST_READS:
                frames, parent = [], event.cpu_parent
                while parent is not None:
                    frames.append(parent.name)
                    parent = parent.cpu_parent
                self.reads.append((event.name, [f for f in frames if ".py(" in f]))
        self._profiler = None

    def on_exception(self, trainer, module, exception):
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self._profiler = None


def _innermost_vtagml_function(frames: list[str]) -> str | None:
    """``module.py(275): on_before_optimizer_step`` -> ``on_before_optimizer_step`` (None outside vtagml)."""
    inner = next((f for f in frames if "vtagml/" in f), None)
    return inner.rsplit(": ", 1)[-1] if inner else None


@pytest.mark.parametrize("troa_exact_every", [0, 1])
def test_training_step_reads_nothing_back_to_the_host(tmp_path, tiny_checkpoint, troa_exact_every):
    """Forward, losses and TROA (first order, and the exact lookahead) keep every value on the device,
    so an accelerator never waits for the host in them. Two reads are by design: the input range
    check of CPU images (on accelerators an asynchronous device assert) and the non-finite loss check
    before the optimizer step (it must stop training before the weights change). torch's own CPU
    optimizer internals are not vtagml's. (Reads that dispatch no operator, ``tolist()`` or
    ``numpy()``, are not seen on a CPU.)"""
    probe = HostReads()
    module = tiny_module(tiny_checkpoint, troa_exact_every=troa_exact_every)
    counts = []

    class TroaCounts(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            counts.append(module.net.troa.counts.sum().item())

    trainer(tmp_path, max_steps=2, enable_checkpointing=False, limit_val_batches=0,
            callbacks=[probe, TroaCounts()]).fit(module, tiny_data(batch_size=2))
    assert counts[1] > counts[0]  # TROA measured in the profiled step
    where = {_innermost_vtagml_function(frames) for _, frames in probe.reads}
    assert {"_as_unit_range", "on_before_optimizer_step"} <= where  # the profile saw the whole step
    unexpected = [(op, frames[:3]) for op, frames in probe.reads
                  if _innermost_vtagml_function(frames) not in {"_as_unit_range", "on_before_optimizer_step", None}
                  or (_innermost_vtagml_function(frames) is None and not any("torch/optim" in f for f in frames))]
    assert not unexpected


def test_fine_tuned_trunk_trains_with_troa(tmp_path, tiny_checkpoint):
    """The mtl-ft setting: the trunk trains too (still run once), TROA still reads branch gradients."""
    net = VTAGML(TINY_SWIN["name"], tasks=TASKS, num_classes=6, img_size=64, checkpoint_path=tiny_checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16,
                 train_trunk=True, train_adapted_blocks=True)
    module = MultitaskModule(net, lr=5e-3)
    trunk = net.trunk["patch_embed"].proj.weight.clone()
    trainer(tmp_path, max_steps=2, enable_checkpointing=False, limit_val_batches=0).fit(module, tiny_data())
    assert not torch.equal(net.trunk["patch_embed"].proj.weight, trunk)
    assert torch.all(net.troa.counts == 2) and not torch.equal(net.task_affinity(), torch.eye(4))
    assert net.parameter_report()["trunk"]["frozen"] == 0


def test_evaluation_resizes_images_only_and_predictions_back_to_native_labels(tmp_path, tiny_checkpoint, nyud):
    """The reference evaluators' protocol: the model sees the resized image; metrics compare at the
    labels' native resolution (predictions resized back)."""
    from vtagml.data import FolderDataModule
    from vtagml.engine.module import at_label_size
    dm = FolderDataModule("nyudv2", str(nyud), tasks=list(TASKS), eval_size=[32, 48], num_workers=0, batch_size=1,
                          pin_memory=False)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    native = tuple(batch["depth"].shape[-2:])
    assert tuple(batch["image"].shape[-2:]) == (32, 48) and native != (32, 48)
    net = VTAGML(TINY_SWIN["name"], tasks=TASKS, num_classes=40, img_size=64, checkpoint_path=tiny_checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16)
    module = MultitaskModule(net)
    t = trainer(tmp_path)
    t.validate(module, dm)
    assert {"val/depth/rmse", "val/semseg/miou", "val/normals/mean_angle", "val/edges/odsf"} <= set(t.callback_metrics)
    pred = torch.arange(6.0).view(1, 1, 2, 3)
    assert at_label_size(pred, torch.zeros(1, 1, 2, 3)) is pred
    assert at_label_size(pred, torch.zeros(1, 4, 6)).shape == (1, 1, 4, 6)


def test_edge_match_distance_comes_from_the_dataset(tmp_path, tiny_checkpoint, nyud):
    from vtagml.data import FolderDataModule
    dm = FolderDataModule("nyudv2", str(nyud), tasks=list(TASKS), num_workers=0, batch_size=1, pin_memory=False)
    assert dm.edge_max_dist == 0.011 and tiny_data().edge_max_dist == 0.0075
    net = VTAGML(TINY_SWIN["name"], tasks=TASKS, num_classes=40, img_size=64, checkpoint_path=tiny_checkpoint,
                 backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16)
    module = MultitaskModule(net)
    assert module.val_metrics["edges"]["odsf"].max_dist == 0.0075
    trainer(tmp_path).validate(module, dm)
    assert module.val_metrics["edges"]["odsf"].max_dist == 0.011 and net.tasks[3].max_dist == 0.011
    assert module.test_metrics["edges"]["odsf"].max_dist == 0.011


PAPER_CONFIGS = {  # config -> (loss weights S-D-N-E, eval size, edge maxDist)
    "nyudv2_swin_b.yaml": ((1.0, 1.0, 10.0, 50.0), [448, 576], 0.011),
    "taskonomy_swinv2_b.yaml": ((1.0, 1.0, 1.0, 1.0), [256, 256], 0.0075),
}


@pytest.mark.parametrize("config", sorted(PAPER_CONFIGS))
def test_paper_configs_state_their_protocol_and_stay_parameter_efficient(config):
    """Loss weights reach the tasks, evaluation size and maxDist are the protocol's, and the
    adapters (real Swin-B / Swin V2-B architecture, built on the meta device) stay a small
    fraction of the frozen backbone."""
    import yaml
    from vtagml.data.datamodule import dataset_registry
    cfg = yaml.safe_load(open(ROOT / "configs" / config))
    weights, eval_size, max_dist = PAPER_CONFIGS[config]
    net_args, data_args = cfg["model"]["net"]["init_args"], cfg["data"]["init_args"]
    assert "embed_dim" in net_args and data_args["eval_size"] == eval_size
    dataset = dataset_registry()[data_args["dataset"]]
    assert dataset.edge_max_dist == max_dist
    kw = {k: v for k, v in net_args.items() if k != "pretrained"}
    with torch.device("meta"):
        net = VTAGML(**kw, tasks=data_args["tasks"], num_classes=len(dataset.classes))
    assert [t.weight for t in net.tasks] == list(weights)
    report = net.parameter_report()
    assert report["backbone_parameters"] > 80e6
    assert report["adapters_per_backbone"] < 0.2, report["adapters_per_backbone"]  # measured 0.140 / 0.141


def test_describe_device_names_the_cpu_its_instruction_set_and_threads(monkeypatch, tmp_path):
    from vtagml import machine
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu\n")
    assert machine.cpu_name(str(cpuinfo)) == "AMD EPYC 9B14"
    monkeypatch.setattr(machine, "cpu_name", lambda: "AMD EPYC 9B14")
    monkeypatch.setattr(machine, "usable_cpus", lambda: 2)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert machine.describe_device("cpu") == "AMD EPYC 9B14, 2 CPUs, AVX2, 1 thread"
        torch.set_num_threads(2)
        assert machine.describe_device(torch.device("cpu")) == "AMD EPYC 9B14, 2 CPUs, AVX2, 2 threads"
    finally:
        torch.set_num_threads(old)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: asked.append(d) or "NVIDIA H100 80GB HBM3")
    assert machine.describe_device("cuda:1") == "NVIDIA H100 80GB HBM3" and asked == [torch.device("cuda:1")]
    assert machine.describe_device("meta") == "meta"


def test_cpu_name_falls_back_without_a_model_name(monkeypatch, tmp_path):
    from vtagml import machine
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd40\n")  # aarch64: no "model name"
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    assert machine.cpu_name(str(arm)) == "aarch64"
    assert machine.cpu_name(str(tmp_path / "missing")) == "aarch64"
    monkeypatch.setattr(machine.platform, "machine", lambda: "")
    assert machine.cpu_name(str(arm)) == "unknown CPU"
