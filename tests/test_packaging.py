"""What a user gets from ``pip install vtagml``: the wheel's contents, packaged configs and weights
from any folder, the ``vtagml`` command (help, refusals), checkpoints that a kill never truncates,
and pins that CI proves (``.ci/lowest.txt`` equals pyproject's lower bounds)."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_SWIN
from vtagml.cli import main, run_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vtagml"


def tiny_config(folder: Path, checkpoint: Path) -> Path:
    """A LightningCLI config of a tiny model on tiny synthetic data."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(folder / "run")},
        "model": {"net": {"class_path": "vtagml.VTAGML", "init_args": {
            "backbone": TINY_SWIN["name"], "img_size": 64, "checkpoint_path": str(checkpoint),
            "backbone_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SWIN["kwargs"].items()},
            "adapt_last_k": 2, "embed_dim": 8, "decoder_channels": 16}}},
        "data": {"class_path": "vtagml.data.SyntheticDataModule", "init_args": {
            "tasks": ["semseg", "depth"], "size": 64, "train_samples": 4, "val_samples": 2, "test_samples": 2,
            "batch_size": 2}},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_cli(tmp_path_factory, tiny_checkpoint):
    """``vtagml fit`` (one step) as the command line builds it: its trainer saves the checkpoints."""
    folder = tmp_path_factory.mktemp("cli")
    return run_cli(["fit", "--config", str(tiny_config(folder, tiny_checkpoint)), "--trainer.fast_dev_run", "true"])


def _other_filesystem():
    """Make renames across directories fail with EXDEV, as they do when ``$TMPDIR`` is on another
    filesystem than the checkpoint (a tmpfs, another disk, a network mount)."""
    real_rename, real_replace = os.rename, os.replace

    def guarded(real):
        def rename(src, dst, *args, **kwargs):
            if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
                raise OSError(errno.EXDEV, "Invalid cross-device link", src)
            return real(src, dst, *args, **kwargs)
        return rename

    os.rename, os.replace = guarded(real_rename), guarded(real_replace)


_FILE_EVENTS = {"open", "os.rename", "os.remove", "os.truncate", "shutil.copyfile", "tempfile.mkstemp",
                "os.utime", "os.chmod"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _save_in_killed_child(trainer, path: Path, tmpdir: Path, kill_at_event: int | None = None,
                          kill_mid_write: bool = False) -> int:
    """Save a checkpoint in a forked copy of this process that is killed (SIGKILL: no cleanup runs)
    before its ``kill_at_event``-th filesystem change, or half-way through writing a file. Returns
    the child's wait status; 0 when the save completed before the kill point."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    try:  # the child: never returns into pytest
        os.environ["TMPDIR"] = str(tmpdir)
        tempfile.tempdir = None
        _other_filesystem()
        if kill_at_event is not None:
            seen = [0]

            def hook(event, args):
                if event not in _FILE_EVENTS:
                    return
                if event == "open" and not (isinstance(args[2], int) and args[2] & _WRITE_FLAGS):
                    return  # reads change nothing
                seen[0] += 1
                if seen[0] == kill_at_event:
                    _kill_self()

            sys.addaudithook(hook)
        if kill_mid_write:
            import io
            real_save, real_sendfile = torch.save, os.sendfile

            def half_save(obj, f, *args, **kwargs):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                half = buffer.getvalue()[: buffer.tell() // 2]
                if hasattr(f, "write"):
                    f.write(half)
                    f.flush()
                    if isinstance(f, io.BytesIO):  # serialized in memory first: the kill comes later
                        f.seek(0)
                        f.truncate()
                        real_save(obj, f, *args, **kwargs)
                        return
                else:
                    with open(f, "wb") as out:
                        out.write(half)
                _kill_self()

            def half_sendfile(out_fd, in_fd, offset, count):
                real_sendfile(out_fd, in_fd, offset, max(1, os.fstat(in_fd).st_size // 2))
                _kill_self()

            torch.save, os.sendfile = half_save, half_sendfile
        trainer.save_checkpoint(path)
        os._exit(0)
    except BaseException:
        os._exit(3)


def _assert_complete_checkpoint(path: Path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k.startswith("net.") for k in state["state_dict"])


def _leftovers(folder: Path, keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != keep)


def _saved_checkpoint(trainer, tmp_path):
    """A checkpoint folder with one saved checkpoint, and a ``$TMPDIR`` stand-in on the side:
    (folder, tmpdir, checkpoint path, its bytes)."""
    folder, tmpdir = tmp_path / "ckpt", tmp_path / "othertmp"
    folder.mkdir()
    tmpdir.mkdir()
    path = folder / "vtagml-demo.ckpt"
    trainer.save_checkpoint(path)
    return folder, tmpdir, path, path.read_bytes()


def test_checkpoint_save_killed_at_any_point_keeps_a_complete_checkpoint(fitted_cli, tmp_path):
    """``$TMPDIR`` on another filesystem, the save is killed before each of its filesystem changes
    in turn: the checkpoint is always the previous one or the new one, complete; nothing is left in
    ``$TMPDIR``; what is left next to the checkpoint goes with the next save."""
    trainer = fitted_cli.trainer
    folder, tmpdir, path, _ = _saved_checkpoint(trainer, tmp_path)
    for kill_at in range(1, 100):
        status = _save_in_killed_child(trainer, path, tmpdir, kill_at_event=kill_at)
        _assert_complete_checkpoint(path)
        assert not list(tmpdir.iterdir()), f"killed at change {kill_at}: left in $TMPDIR"
        if status == 0:
            break
        assert os.WIFSIGNALED(status), status
        trainer.save_checkpoint(path)  # the next save of the same checkpoint
        assert _leftovers(folder, path) == [], f"killed at change {kill_at}"
    else:
        pytest.fail("the save never completed")
    assert kill_at > 1


def test_checkpoint_save_killed_mid_write_keeps_a_complete_checkpoint(fitted_cli, tmp_path):
    """The save is killed half-way through writing a file (the checkpoint's bytes, or a copy of
    them), ``$TMPDIR`` on another filesystem: the previous checkpoint is intact."""
    trainer = fitted_cli.trainer
    folder, tmpdir, path, before = _saved_checkpoint(trainer, tmp_path)
    status = _save_in_killed_child(trainer, path, tmpdir, kill_mid_write=True)
    assert os.WIFSIGNALED(status), status
    assert path.read_bytes() == before
    assert not list(tmpdir.iterdir())
    trainer.save_checkpoint(path)
    _assert_complete_checkpoint(path)
    assert _leftovers(folder, path) == []


def test_failed_checkpoint_save_leaves_the_previous_one_and_no_temporary_file(fitted_cli, tmp_path,
                                                                              monkeypatch):
    trainer = fitted_cli.trainer
    folder, tmpdir, path, before = _saved_checkpoint(trainer, tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)

    def broken_save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"partial")
        else:
            Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(folder, path) == [] and not list(tmpdir.iterdir())


def test_cli_and_demo_trainers_save_through_the_atomic_checkpoint_io(fitted_cli, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vtagml.demo import demo_trainer
    from vtagml.engine.checkpoint import AtomicCheckpointIO

    assert isinstance(fitted_cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer = demo_trainer(tmp_path, epochs=1)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    (checkpoint,) = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert checkpoint.dirpath == str(tmp_path) and checkpoint.filename == "vtagml-demo"


def test_a_checkpoint_io_given_on_the_command_line_is_kept(tmp_path, tiny_checkpoint):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from vtagml.cli import VTAGMLCLI
    from vtagml.data.datamodule import MultitaskDataModule
    from vtagml.engine.module import MultitaskModule

    def trainer_of(*args):
        return VTAGMLCLI(MultitaskModule, MultitaskDataModule, subclass_mode_data=True, run=False,
                         args=["--config", str(tiny_config(tmp_path, tiny_checkpoint)), *args]).trainer

    given = trainer_of("--trainer.plugins", "lightning.pytorch.plugins.io.TorchCheckpointIO")
    assert type(given.strategy.checkpoint_io) is TorchCheckpointIO
    from vtagml.engine.checkpoint import AtomicCheckpointIO
    assert isinstance(trainer_of().strategy.checkpoint_io, AtomicCheckpointIO)


def tiny_demo(monkeypatch, checkpoint):
    """``vtagml demo`` with a tiny model and 4 training scenes (its outputs, not its quality)."""
    from vtagml import VTAGML, demo
    from vtagml.data import SyntheticDataModule
    from vtagml.engine.module import MultitaskModule

    def build(train_samples, val_samples, batch_size, lr, seed, weights):
        dm = SyntheticDataModule(tasks=demo.DEMO_TASKS, size=64, domain="a", train_samples=4, val_samples=6,
                                 test_samples=6, seed=seed, batch_size=2, in_memory=True)
        net = VTAGML(TINY_SWIN["name"], tasks=demo.DEMO_TASKS, num_classes=dm.num_classes, img_size=64,
                     checkpoint_path=checkpoint, backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2,
                     embed_dim=8, decoder_channels=16)
        return MultitaskModule(net, lr=lr), dm

    monkeypatch.setattr(demo, "build_demo", build)
    monkeypatch.setattr(demo, "prediction_grid", lambda *args, **kwargs: None)  # a figure: slow, not tested here


def test_demo_trains_in_bf16_mixed_precision(tmp_path, monkeypatch, tiny_checkpoint):
    """``vtagml demo --precision bf16-mixed``: bf16 autocast with the demo's gradient clipping and
    fused AdamW, finite metrics, the precision recorded in ``metrics.json``."""
    import json
    import math

    from vtagml import demo

    tiny_demo(monkeypatch, tiny_checkpoint)
    demo.main(["--out", str(tmp_path), "--epochs", "1", "--precision", "bf16-mixed"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed" and metrics["epochs"] == 1
    values = [v for task in metrics["tasks"].values() for v in task.values()]
    assert len(values) > 8 and all(math.isfinite(v) for v in values)


def test_demo_replaces_metrics_and_adapters_atomically(tmp_path, monkeypatch, tiny_checkpoint):
    """A failure while ``metrics.json`` or ``model/adapters.safetensors`` is written leaves the
    previous file and no temporary file (the demo runs with a tiny model here)."""
    import json

    import safetensors.torch
    from safetensors.torch import load_file

    from vtagml import demo

    tiny_demo(monkeypatch, tiny_checkpoint)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "metrics.json").write_text('{"previous": true}')

    def broken_dump(obj, f, *args, **kwargs):
        f.write('{"tasks": ')
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(json, "dump", broken_dump)
        with pytest.raises(OSError, match="disk full"):
            demo.run_demo(out, epochs=1)
    assert (out / "metrics.json").read_text() == '{"previous": true}'
    weights = out / "model" / "adapters.safetensors"
    adapters = weights.read_bytes()
    assert load_file(str(weights))
    assert not [p.name for p in out.rglob(".*")]

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", broken_save_file)
        with pytest.raises(OSError, match="disk full"):
            demo.run_demo(out, epochs=1)
    assert weights.read_bytes() == adapters
    assert not [p.name for p in out.rglob(".*")]


# --- the vtagml command -----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_lists_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == (0 if argv else 2)
    out = capsys.readouterr()
    text = out.out + out.err
    for command in ("fit", "validate", "test", "predict", "demo", "data check", "pretrain"):
        assert f"vtagml {command}" in text, command


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_a_checkpoint_is_refused(subcommand, tmp_path, tiny_checkpoint):
    """Without ``--ckpt_path`` the heads are untrained: refuse instead of reporting their numbers."""
    with pytest.raises(SystemExit, match=rf"vtagml {subcommand} needs --ckpt_path"):
        run_cli([subcommand, "--config", str(tiny_config(tmp_path, tiny_checkpoint))])


def test_packaged_config_by_bare_name_from_any_folder(tmp_path, monkeypatch):
    """``vtagml fit --config demo.yaml`` in a folder without that file takes the packaged config,
    whose backbone weights are the packaged ones."""
    from safetensors.torch import load_file

    from vtagml.pretrain import demo_weights_path

    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", "demo.yaml", "--trainer.fast_dev_run", "true",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
                   "--data.init_args.train_samples", "2", "--data.init_args.val_samples", "2",
                   "--data.init_args.test_samples", "2", "--data.init_args.batch_size", "2"])
    assert cli.trainer.state.finished
    patch = cli.model.net.trunk["patch_embed"].proj.weight
    shipped = load_file(str(demo_weights_path()))["patch_embed.proj.weight"]
    assert torch.equal(patch.detach().cpu(), shipped.to(patch.dtype))


def test_a_local_config_file_wins_over_the_packaged_one(tmp_path, monkeypatch):
    from vtagml.cli import resolve_config_args

    monkeypatch.chdir(tmp_path)
    assert resolve_config_args(["fit", "--config", "demo.yaml"]) == [
        "fit", "--config", str(PACKAGE / "configs" / "demo.yaml")]
    assert resolve_config_args(["fit", "-c=demo"]) == ["fit", f"-c={PACKAGE / 'configs' / 'demo.yaml'}"]
    (tmp_path / "demo.yaml").write_text("seed_everything: 1\n")
    assert resolve_config_args(["fit", "--config", "demo.yaml"]) == ["fit", "--config", "demo.yaml"]
    with pytest.raises(SystemExit, match="nyudv2_swin_b.yaml"):  # names the packaged configs
        resolve_config_args(["fit", "--config", "nowhere.yaml"])


def test_packaged_weights_are_named_without_a_repository_path(tmp_path):
    from vtagml.models.backbone import resolve_checkpoint_path
    from vtagml.pretrain import demo_weights_path

    cfg = yaml.safe_load((PACKAGE / "configs" / "demo.yaml").read_text())
    named = cfg["model"]["net"]["init_args"]["checkpoint_path"]
    assert named == "vtagml://weights/demo_swin.safetensors"
    assert resolve_checkpoint_path(named) == demo_weights_path().resolve()
    assert resolve_checkpoint_path(tmp_path / "w.pth") == tmp_path / "w.pth"
    for wrong in ("vtagml://weights/nothing.safetensors", "vtagml://../../etc/passwd"):
        with pytest.raises(FileNotFoundError, match="demo_swin.safetensors"):
            resolve_checkpoint_path(wrong)


# --- packaging and pins -----------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_wheel_ships_the_configs_and_the_demo_weights(tmp_path):
    """``pip install .`` (not editable) gets every config and the demo weights."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True, timeout=280)
    (wheel,) = (tmp_path / "dist").glob("vtagml-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.name for p in (PACKAGE / "configs").glob("*.yaml"))
    assert {"demo.yaml", "nyudv2_swin_b.yaml", "taskonomy_swinv2_b.yaml"} <= set(configs)
    for name in configs:
        assert f"vtagml/configs/{name}" in names
        text = zipfile.ZipFile(wheel).read(f"vtagml/configs/{name}").decode()
        assert "src/" not in text, f"{name} names a repository path"
    assert "vtagml/weights/demo_swin.safetensors" in names


def _requirements(pyproject: Path) -> dict[str, str]:
    """``{name: lower bound}`` of every dependency and extra of ``pyproject``."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                                 for r in extra)]
    bounds = {}
    for text in requirements:
        req = Requirement(text)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{text}: one lower bound (>=) per dependency"
        bounds[req.name.lower()] = lower[0]
    return bounds


def test_lowest_constraints_are_the_lower_bounds_of_pyproject():
    """CI's second run installs ``.ci/lowest.txt``: exactly each dependency at its lower bound."""
    pins = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    assert pins == _requirements(ROOT / "pyproject.toml")


def test_torch_is_pinned_to_the_tested_release():
    """torch releases before 2.6 unpickle arbitrary objects in ``torch.load``; the pins admit only
    the release CI installs."""
    from packaging.requirements import Requirement
    tomllib = pytest.importorskip("tomllib")

    deps = {Requirement(r).name: Requirement(r) for r in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert "2.5.1" not in deps["torch"].specifier and "2.14.1" in deps["torch"].specifier
    assert "2.15.0" not in deps["torch"].specifier
