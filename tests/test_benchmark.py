"""`vtagml benchmark`: methods as config overrides, the table's numbers, caching, resume, failures.

Runs train a tiny random Swin (tests/conftest.py) for two steps on a few synthetic scenes, in
process (one test checks the subprocess path).
"""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_SWIN
from vtagml import benchmark
from vtagml.benchmark import METHODS, Preset, load_preset, plan_runs, resolve_config, run_benchmark, summarize

NET = "model.net.init_args."


@pytest.fixture(scope="module")
def fit_config(tmp_path_factory, tiny_checkpoint):
    """A LightningCLI fit config: tiny Swin, 2 tasks, 2 training steps, 4 test scenes."""
    config = dict(
        seed_everything=0,
        trainer=dict(accelerator="cpu", devices=1, max_steps=2, limit_val_batches=0, num_sanity_val_steps=0,
                     enable_checkpointing=False, logger=False),
        model=dict(net=dict(class_path="vtagml.VTAGML", init_args=dict(
            backbone=TINY_SWIN["name"], img_size=64, checkpoint_path=str(tiny_checkpoint),
            backbone_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SWIN["kwargs"].items()},
            adapt_last_k=2, embed_dim=8, decoder_channels=8, task_weights={"semseg": 1.0, "depth": 2.0})), lr=0.001),
        data=dict(class_path="vtagml.data.SyntheticDataModule", init_args=dict(
            tasks=["semseg", "depth"], size=64, train_samples=8, val_samples=4, test_samples=4, batch_size=4)))
    path = tmp_path_factory.mktemp("fit") / "tiny_fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_preset(folder: Path, fit_config: Path, **keys) -> Path:
    preset = {"fit_config": str(fit_config), "seeds": 1, "eval_split": "test", "isolation": "inprocess", **keys}
    path = folder / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


class Counting:
    """Wraps ``benchmark.execute_run``: counts trainings, optionally interrupts the n-th one."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        self.calls, self.interrupt_at, self.real = [], interrupt_at, benchmark.execute_run
        monkeypatch.setattr(benchmark, "execute_run", self)

    def __call__(self, directory, eval_split, threads=None):
        self.calls.append(Path(directory).name)
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(directory, eval_split, threads)


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


# --------------------------------------------------------------------------- the table's numbers


def record(method, seed, metrics, task=None, status="ok", trainable=10, total=100, ips=50.0, memory=200.0):
    return dict(name=f"{method}-seed{seed}" + (f"-{task}" if task else ""), method=method, seed=seed, task=task,
                status=status, metrics=metrics, primary={"semseg": "miou", "depth": "rmse"},
                higher_is_better={"semseg/miou": True, "semseg/pixel_acc": True, "depth/rmse": False},
                parameters=dict(trainable=trainable, total=total), train_images_per_s=ips, peak_memory_mb=memory,
                error="" if status == "ok" else "RuntimeError: boom")


def test_summary_delta_m_and_csv_exact(tmp_path):
    """Δm per seed against the mean stl reference, averaged over tasks (one primary metric each,
    whatever else a task logs), mean ± sample std over seeds; per-task parameters summed."""
    records = [
        record("stl", 0, {"semseg/miou": 0.5, "semseg/pixel_acc": 0.9}, task="semseg", trainable=10, ips=100),
        record("stl", 0, {"depth/rmse": 1.2}, task="depth", trainable=20, ips=100),
        record("stl", 1, {"semseg/miou": 0.6, "semseg/pixel_acc": 0.1}, task="semseg", trainable=10, ips=100),
        record("stl", 1, {"depth/rmse": 1.0}, task="depth", trainable=20, ips=100, memory=300.0),
        # reference means: miou 0.55, rmse 1.1
        record("mtl", 0, {"semseg/miou": 0.605, "semseg/pixel_acc": 0.0, "depth/rmse": 0.99}),  # +10%, +10%
        record("mtl", 1, {"semseg/miou": 0.55, "semseg/pixel_acc": 0.0, "depth/rmse": 1.1}),  # 0, 0
        record("broken", 0, {}, status="failed"),
        record("half", 0, {"semseg/miou": 0.495, "depth/rmse": 1.1}),  # -10%, 0 -> -5
        record("half", 1, {}, status="failed"),
    ]
    rows, primary, directions = summarize(records, ["stl", "mtl", "broken", "half"], ["semseg", "depth"])
    assert primary == {"semseg": "miou", "depth": "rmse"}
    stl, mtl, broken, half = rows
    assert mtl.delta_m[0] == pytest.approx(5.0, abs=1e-9)
    assert mtl.delta_m[1] == pytest.approx(math.sqrt(50.0), abs=1e-9)  # sample std of [10, 0]
    assert mtl.metrics["semseg/miou"] == pytest.approx((0.5775, math.sqrt(2 * 0.0275 ** 2)))
    # the reference's own Δm is 0 on average and spreads with its seed noise: seed 0 is
    # 50 * (-0.05 / 0.55 - 0.1 / 1.1) = -100/11, seed 1 is +100/11
    assert stl.delta_m[0] == pytest.approx(0.0, abs=1e-9)
    assert stl.delta_m[1] == pytest.approx(math.sqrt(2) * 100 / 11, abs=1e-9)
    assert (stl.trainable, stl.total, stl.images_per_s, stl.peak_memory_mb) == (30, 200, 50.0, 300.0)
    assert (broken.status, broken.runs_ok, broken.delta_m) == ("FAILED", 0, (None, None))
    assert (half.status, half.runs_ok, half.runs_total) == ("partial", 1, 2)
    assert half.delta_m == (pytest.approx(-5.0, abs=1e-9), None)

    benchmark.write_csv(tmp_path / "b.csv", rows, primary)
    table = read_csv(tmp_path / "b.csv")
    assert list(table) == ["stl", "mtl", "broken", "half"]
    assert table["mtl"]["delta_m"] == "5.0" and table["mtl"]["delta_m_std"] == "7.0711"
    assert table["mtl"]["depth/rmse"] == "1.045" and table["stl"]["trainable_params"] == "30"
    assert table["broken"]["status"] == "FAILED" and table["broken"]["semseg/miou"] == ""
    assert "RuntimeError: boom" in table["broken"]["errors"]
    md = benchmark.markdown_table(rows, primary, directions)
    assert "| mtl | 0.5775 ± 0.039 | 1.045 ± 0.078 | +5.00 ± 7.07 |" in md
    assert "| broken | FAILED | FAILED | FAILED |" in md


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_builds_the_intended_model(method, fit_config, tmp_path):
    """The overrides of each method, through LightningCLI, give the model the method describes."""
    preset = load_preset(write_preset(tmp_path, fit_config, methods=[method]))
    run = next(r for r in plan_runs(preset, tmp_path / "out") if r.method == method)
    resolved, _ = resolve_config(run.config)
    cli = benchmark.make_cli(resolved)
    net, module = cli.model.net, cli.model
    report = net.parameter_report()
    trainable = {k: v["trainable"] for k, v in report.items() if isinstance(v, dict)}
    weights = {"semseg": 1.0} if method == "stl" else {"semseg": 1.0, "depth": 2.0}  # stl keeps its task's weight
    assert {t.name: t.weight for t in net.tasks} == weights
    assert trainable["decoders"] > 0 and trainable["heads"] > 0
    backbone_trained = method == "mtl-ft"
    assert (trainable["trunk"] == report["trunk"]["trainable"] + report["trunk"]["frozen"] > 0) == backbone_trained
    assert (trainable["adapted_blocks"] > 0) == backbone_trained
    assert (trainable["trunk"] == 0) == (not backbone_trained)
    expect = dict(taa=method in ("vtagml", "vtagml-no-troa", "vtagml-no-tsn", "vtagml-no-bottleneck"),
                  tsn=method in ("vtagml", "vtagml-no-troa", "vtagml-no-taa", "vtagml-no-bottleneck"),
                  bottleneck=method in ("adapter", "vtagml", "vtagml-no-troa", "vtagml-no-taa", "vtagml-no-tsn"),
                  embeddings=method.startswith("vtagml"))  # only a conditioned model trains task embeddings
    for component, on in expect.items():
        assert (trainable[component] > 0) == on, (method, component, trainable)
    troa = method in ("vtagml", "vtagml-no-taa", "vtagml-no-tsn", "vtagml-no-bottleneck")
    assert module.hparams.troa is troa


def test_presets_and_method_flags(tmp_path, capsys):
    """Shipped presets plan every method on the same settings and resolve as `vtagml fit` configs;
    --dry-run writes each run's config and prints the `vtagml fit` command of each method."""
    shipped = sorted(benchmark.packaged_configs_dir().glob("benchmark_*.yaml"))
    assert {p.name for p in shipped} >= {f"benchmark_{n}.yaml" for n in ("synthetic", "nyudv2", "taskonomy")}
    for path in shipped:
        preset = load_preset(path)
        assert set(preset.methods) == set(METHODS), path.name
        runs = plan_runs(preset, tmp_path / path.stem)
        tasks = yaml.safe_load(preset.fit_config.read_text())["data"]["init_args"]["tasks"]
        assert len(runs) == preset.seeds * (len(METHODS) - 1 + len(tasks))
        resolved = {r.name: resolve_config(r.config)[0] for r in runs if r.seed == 0}
        shared = ("data", "trainer.max_epochs", "model.lr", "model.schedule", NET + "backbone", NET + "decoder")
        ref = resolved["vtagml-seed0"]
        for name, config in resolved.items():
            for key in shared:
                a, b = benchmark.get_dotted(config, key), benchmark.get_dotted(ref, key)
                if key == "data" and name.startswith("stl"):
                    a, b = dict(a["init_args"], tasks=None), dict(b["init_args"], tasks=None)
                assert a == b, (path.name, name, key)
        if "nyudv2" in path.name:  # the paper's NYUD-v2 setting, evaluated on the 654 images of NYUD_MT val
            data = ref["data"]["init_args"]
            assert (data["crop_size"], data["batch_size"], ref["trainer"]["max_epochs"]) == ([448, 576], 8, 100)
            assert preset.eval_split == "val"
            weights = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edges": 50.0}
            assert ref["model"]["net"]["init_args"]["task_weights"] == weights
            for task, weight in weights.items():  # a single-task model keeps its task's weight
                assert resolved[f"stl-seed0-{task}"]["model"]["net"]["init_args"]["task_weights"] == {task: weight}
    benchmark.main(["--config", "benchmark_synthetic.yaml", "--methods", "mtl,vtagml", "--seeds", "1", "--out",
                    str(tmp_path / "dry"), "--dry-run"])
    printed = capsys.readouterr().out
    assert "method mtl: vtagml fit --config" in printed and "--model.net.init_args.use_taa false" in printed
    assert sorted(p.name for p in (tmp_path / "dry" / "runs").iterdir()) == [
        "mtl-seed0", "stl-seed0-depth", "stl-seed0-edges", "stl-seed0-normals", "stl-seed0-semseg", "vtagml-seed0"]
    assert not list((tmp_path / "dry").glob("runs/*/result.json"))


# --------------------------------------------------------------------------- a whole tiny benchmark


def test_benchmark_resumes_caches_and_reuses(fit_config, tmp_path, monkeypatch):
    """Interrupted at its 3rd run, the rerun trains only the 2 missing runs; a third invocation trains
    nothing (a method with the same config as another reuses its run); the report holds the runs' numbers."""
    out = tmp_path / "out"
    preset = write_preset(tmp_path, fit_config, methods=["mtl", "vtagml"])
    counter = Counting(monkeypatch, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(preset, out, log=lambda m: None)
    assert counter.calls == ["stl-seed0-semseg", "stl-seed0-depth", "mtl-seed0"]
    assert not (out / "runs" / "mtl-seed0" / "result.json").exists()

    counter = Counting(monkeypatch)
    lines = []
    rows = run_benchmark(preset, out, log=lines.append)
    assert counter.calls == ["mtl-seed0", "vtagml-seed0"]
    assert any("stl-seed0-semseg: cached" in line for line in lines)
    assert any("vtagml-seed0: start" in line and "ETA" in line for line in lines)
    assert [r.method for r in rows] == ["stl", "mtl", "vtagml"] and all(r.status == "ok" for r in rows)

    results = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}
    assert set(results) == {"stl-seed0-semseg", "stl-seed0-depth", "mtl-seed0", "vtagml-seed0"}
    assert all(r["status"] == "ok" and len(r["key"]) == 64 for r in results.values())
    vt = results["vtagml-seed0"]
    assert vt["train_images"] == 8 and vt["train_images_per_s"] > 0 and vt["peak_memory_mb"] > 0
    table = read_csv(out / "benchmark.csv")
    assert float(table["vtagml"]["semseg/miou"]) == pytest.approx(vt["metrics"]["semseg/miou"], abs=1e-6)
    assert int(table["vtagml"]["trainable_params"]) == vt["parameters"]["trainable"]
    assert float(table["stl"]["depth/rmse"]) == pytest.approx(results["stl-seed0-depth"]["metrics"]["depth/rmse"])
    assert int(table["stl"]["total_params"]) == sum(results[f"stl-seed0-{t}"]["parameters"]["total"]
                                                    for t in ("semseg", "depth"))
    assert (out / "benchmark.png").stat().st_size > 10_000
    md = (out / "benchmark.md").read_text()
    assert "| vtagml |" in md and "Δm" in md and "vtagml fit --config" in md
    from vtagml.machine import describe_device
    assert vt["machine"] == describe_device("cpu") and describe_device("cpu") in md  # timings name their machine

    # rerun, plus a method whose config equals mtl's: nothing trains, mtl's run is reused; one cached run
    # was measured on another machine (a resumed benchmark): the report names both
    mtl_result = out / "runs" / "mtl-seed0" / "result.json"
    mtl_result.write_text(json.dumps({**results["mtl-seed0"], "machine": "Other CPU, 8 CPUs, AVX512, 8 threads"}))
    write_preset(tmp_path, fit_config, methods=["mtl", "vtagml", "mtl-again"],
                 define_methods={"mtl-again": {"base": "mtl"}})
    counter = Counting(monkeypatch)
    lines = []
    rows = run_benchmark(preset, out, log=lines.append)
    assert counter.calls == []
    assert any("mtl-again-seed0: cached (same config as mtl-seed0)" in line for line in lines)
    again = {r.method: r for r in rows}
    assert again["mtl-again"].metrics == again["mtl"].metrics
    md = (out / "benchmark.md").read_text()
    assert "Other CPU, 8 CPUs, AVX512, 8 threads" in md and describe_device("cpu") in md
    assert "timings from different machines" in md

    # each run's config is a `vtagml fit` config that trains that model alone
    from vtagml.cli import run_cli
    cli = run_cli(["fit", "--config", str(out / "runs" / "mtl-seed0" / "config.yaml"), "--trainer.max_steps", "1",
                   "--trainer.default_root_dir", str(tmp_path / "fit")])
    assert cli.trainer.state.finished
    assert cli.model.net.parameter_report()["total"]["trainable"] == results["mtl-seed0"]["parameters"]["trainable"]


def test_failed_runs_are_reported_and_the_rest_completes(fit_config, tmp_path):
    """A run that raises while building or training, and one whose config does not parse, are
    FAILED in the table and in result.json; the other methods finish."""
    preset = write_preset(tmp_path, fit_config, methods=["broken", "bad-key", "mtl"],
                          overrides={"data.init_args.tasks": ["semseg"], NET + "task_weights": None},
                          define_methods={"broken": {"base": "vtagml", "overrides": {NET + "decoder": "nope"}},
                                          "bad-key": {"base": "vtagml", "overrides": {"model.no_such_option": 1}}})
    out = tmp_path / "out"
    rows = run_benchmark(preset, out, log=lambda m: None)
    status = {r.method: r.status for r in rows}
    assert status == {"stl": "ok", "broken": "FAILED", "bad-key": "FAILED", "mtl": "ok"}
    broken = json.loads((out / "runs" / "broken-seed0" / "result.json").read_text())
    assert broken["status"] == "failed" and "unknown decoder 'nope'" in broken["error"] and broken["traceback"]
    bad = json.loads((out / "runs" / "bad-key-seed0" / "result.json").read_text())
    assert bad["status"] == "failed" and "invalid config" in bad["error"] and "no_such_option" in bad["error"]
    table = read_csv(out / "benchmark.csv")
    assert table["broken"]["status"] == "FAILED" and "unknown decoder" in table["broken"]["errors"]
    assert table["mtl"]["status"] == "ok" and table["mtl"]["delta_m"] != ""
    md = (out / "benchmark.md").read_text()
    assert "| broken | FAILED |" in md and "broken-seed0: ValueError: unknown decoder 'nope'" in md


def test_subprocess_run_measures_its_own_process(fit_config, tmp_path):
    """The default isolation: the run trains in a child process that writes result.json and its log."""
    preset = load_preset(write_preset(tmp_path, fit_config, methods=["stl"], isolation="subprocess",
                                      overrides={"data.init_args.tasks": ["depth"]}))
    assert isinstance(preset, Preset)
    out = tmp_path / "out"
    rows = run_benchmark(preset, out, log=lambda m: None)
    assert [r.status for r in rows] == ["ok"]
    result = json.loads((out / "runs" / "stl-seed0-depth" / "result.json").read_text())
    assert result["memory_kind"] == "process_max_rss" and result["peak_memory_mb"] > 50
    assert "depth/rmse" in result["metrics"] and (out / "runs" / "stl-seed0-depth" / "log.txt").is_file()
    assert (out / "runs" / "stl-seed0-depth" / "model" / "config.json").is_file()
