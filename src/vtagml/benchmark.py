"""``vtagml benchmark``: baselines and ablations trained side by side, one table of whether vtagml wins.

Usage::

    vtagml benchmark --config benchmark_synthetic.yaml --out runs/bench          # every method, 2 seeds, CPU
    vtagml benchmark --config benchmark_synthetic.yaml --methods mtl vtagml --seeds 3 --out runs/bench
    vtagml benchmark --config benchmark_nyudv2.yaml --out runs/nyud --dry-run    # plan, configs, no training
    python -m vtagml.benchmark ...                                                # the same

A *preset* (``benchmark_*.yaml``, next to the fit configs) names a LightningCLI fit config, overrides
for every run (budget), the methods, the seeds and the evaluation split (keys: :data:`PRESET_KEYS`).
A *method* (:data:`METHODS`) is a small set of overrides of that fit config, so every method runs
on the same backbone, data, decoders and schedule, and every run is a plain ``vtagml fit`` config:
``DIR/runs/<method>-seed<k>[-<task>]/config.yaml`` (``vtagml fit --config`` that file trains it
alone; ``benchmark.md`` also lists each method as ``vtagml fit`` flags).

What it writes to ``--out DIR``:

- ``benchmark.md`` / ``benchmark.csv``: one row per method: each task's primary metric, mean ± std
  over seeds; Δm against ``stl`` (over tasks, one primary metric each,
  :func:`~vtagml.tasks.metrics.multitask_gain`); trainable and total parameters; training images/s;
  peak memory; and a table of every run with its time;
- ``benchmark.png``: each task's primary metric by method, error bars = std over seeds;
- ``benchmark.json``: the rows and every run's record;
- ``runs/<run>/``: ``config.yaml``, ``result.json``, ``log.txt`` (subprocess runs), ``model/``
  (:meth:`~vtagml.models.vtagml.VTAGML.save_adapters`) and Lightning's logs.

Runs are cached: ``result.json`` holds the SHA-256 of the run's fully resolved config (every
LightningCLI default filled in, the backbone weights by content, the evaluation split, the thread
count and :data:`RESULT_VERSION`; output-location keys :data:`UNHASHED_KEYS` left out). A run whose
key matches a finished result anywhere under ``DIR/runs`` is not trained again, so reruns, added
methods and an interrupted benchmark redo only what is missing (an interrupted run restarts from
its beginning). The key is conservative: a library update that adds an option or changes a
default changes the resolved config, and the runs train again. A run that raises is recorded (``status: failed``, the error and traceback in
``result.json``, ``FAILED`` in the tables) and the benchmark goes on; failed runs are retried by
the next invocation.

Runs execute one at a time, by default each in its own Python process (``isolation:
subprocess``): a crash, a leak or an out-of-memory kill takes one run, not the benchmark, and the
peak memory is the run's own (``ru_maxrss`` of that process on CPU, everything included;
``torch.cuda.max_memory_allocated`` on GPU). It costs an interpreter start and imports per run
(about 5 s). ``isolation: inprocess`` skips that (tests, debugging); its CPU peak memory is then the
whole process's so far.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

#: Bumped when what a run measures or records changes: cached results of another version are redone.
RESULT_VERSION = 1
#: Resolved-config keys that say where a run writes or how it displays, not what it computes:
#: left out of the cache key.
UNHASHED_KEYS = ("trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                 "predict_out")
#: The method every other is measured against (Δm), trained by the benchmark itself.
REFERENCE = "stl"
#: Keys of a benchmark preset (YAML): see :class:`Preset`.
PRESET_KEYS = ("fit_config", "overrides", "methods", "seeds", "eval_split", "isolation", "threads", "define_methods")
RUN_CONFIG, RUN_RESULT, RUN_LOG, RUN_MODEL = "config.yaml", "result.json", "log.txt", "model"

#: model arguments that map task names to settings (restricted to the task in single-task runs)
PER_TASK_NET_ARGS = ("task_weights", "task_options", "image_skip_stride")
NET = "model.net.init_args."


@dataclass(frozen=True)
class Method:
    """A baseline or ablation: overrides of the fit config, as LightningCLI's dotted keys.

    Args:
        overrides: ``{"model.net.init_args.use_taa": False, "model.troa": False, ...}``; each method
            sets every switch it depends on, so it does not inherit them from the fit config.
        per_task: one model per task (``data.init_args.tasks`` set to that one task, and
            ``model.net.init_args.task_weights`` to its weight).
        description: one line for the tables.
    """

    overrides: Mapping[str, Any]
    per_task: bool = False
    description: str = ""


_FROZEN = {NET + "train_trunk": False, NET + "train_adapted_blocks": False}
_ADAPTERS_OFF = {NET + "use_taa": False, NET + "use_tsn": False, NET + "use_bottleneck": False, "model.troa": False}
_VTAGML = {NET + "use_taa": True, NET + "use_tsn": True, NET + "use_bottleneck": True, "model.troa": True, **_FROZEN}

#: Method name -> :class:`Method`: the baselines and ablations of DESIGN.md section 9. Every method
#: shares the fit config's backbone, data, decoders and schedule and changes only these keys
#: (``model.troa: false`` gives alpha = I, each task conditioned on its own embedding).
METHODS: dict[str, Method] = {
    "stl": Method({**_ADAPTERS_OFF, **_FROZEN}, per_task=True,
                  description="one model per task: frozen backbone, that task's decoder, no adapters"),
    "mtl": Method({**_ADAPTERS_OFF, **_FROZEN}, description="frozen shared backbone, per-task decoders, no adapters"),
    "mtl-ft": Method({**_ADAPTERS_OFF, NET + "train_trunk": True, NET + "train_adapted_blocks": True},
                     description="mtl with the whole backbone fine-tuned"),
    "adapter": Method({**_VTAGML, NET + "use_taa": False, NET + "use_tsn": False, "model.troa": False},
                      description="plain bottleneck adapters on the adapted blocks: no TAA, TSN (every norm a "
                                  "plain LayerNorm) or TROA; nothing task-conditioned but the decoders"),
    "vtagml": Method(_VTAGML, description="the full method: TROA, TAA, TSN, bottleneck"),
    "vtagml-no-troa": Method({**_VTAGML, "model.troa": False}, description="vtagml without TROA (alpha = I)"),
    "vtagml-no-taa": Method({**_VTAGML, NET + "use_taa": False}, description="vtagml without TAA"),
    "vtagml-no-tsn": Method({**_VTAGML, NET + "use_tsn": False},
                            description="vtagml without TSN (the bottleneck's norm included)"),
    "vtagml-no-bottleneck": Method({**_VTAGML, NET + "use_bottleneck": False},
                                   description="vtagml without the bottleneck adapter"),
}


# --------------------------------------------------------------------------- presets and planning


@dataclass
class Preset:
    """A benchmark preset (YAML file).

    Attributes:
        path: the preset file.
        fit_config: the LightningCLI fit config every run starts from (a path relative to the
            preset's folder, or the name of a packaged config).
        overrides: dotted keys applied to the fit config for every run (the benchmark's budget).
        methods: method names to run (``stl`` is added: it is the Δm reference).
        seeds: runs per method, seeds ``0 .. seeds-1`` (``seed_everything``; the data keep their own
            seed, so every run sees the same splits).
        eval_split: ``test`` or ``val``: the split that every run is evaluated on after training.
        isolation: ``subprocess`` (default) or ``inprocess``.
        threads: CPU threads of each run (``torch.set_num_threads``; subprocess runs also get
            ``OMP_NUM_THREADS``); None: torch's default (one per core). On a CPU shared with other
            jobs, 1 avoids threads waiting on each other while descheduled.
        define_methods: extra methods, ``{name: {base: METHOD, overrides: {...}}}``.
    """

    path: Path
    fit_config: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 2
    eval_split: str = "test"
    isolation: str = "subprocess"
    threads: int | None = None
    define_methods: dict[str, Method] = field(default_factory=dict)

    @property
    def registry(self) -> dict[str, Method]:
        return {**METHODS, **self.define_methods}


def find_config(value: str | os.PathLike, folder: Path | None = None) -> Path:
    """A config file: ``value`` as a path (relative to ``folder`` when given and found there), else
    the config of that name shipped with the package."""
    path = Path(value)
    candidates = [folder / path] if folder is not None and not path.is_absolute() else []
    candidates += [path, packaged_configs_dir() / path.name, packaged_configs_dir() / f"{path.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"config {str(value)!r} not found (looked in {[str(c.parent) for c in candidates]}); "
                            f"packaged: {sorted(p.name for p in packaged_configs_dir().glob('*.yaml'))}")


def packaged_configs_dir() -> Path:
    return Path(__file__).resolve().parent / "configs"


def load_preset(path: str | os.PathLike) -> Preset:
    """Read and check a preset file (unknown keys, methods and values are refused by name)."""
    path = find_config(path)
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - set(PRESET_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown preset key(s) {unknown}; a preset has {list(PRESET_KEYS)}")
    if "fit_config" not in raw:
        raise ValueError(f"{path}: a preset needs fit_config (the LightningCLI config every run starts from)")
    defined = {}
    for name, spec in (raw.get("define_methods") or {}).items():
        if not isinstance(spec, dict) or set(spec) - {"base", "overrides", "description"}:
            raise ValueError(f"{path}: define_methods.{name} must be {{base: METHOD, overrides: {{...}}}}, "
                             f"got {spec!r}")
        base = METHODS.get(spec.get("base", ""))
        if base is None:
            raise ValueError(f"{path}: define_methods.{name}.base must be one of {list(METHODS)}, "
                             f"got {spec.get('base')!r}")
        defined[name] = Method({**base.overrides, **(spec.get("overrides") or {})}, base.per_task,
                               spec.get("description", f"{spec['base']} with {spec.get('overrides') or {}}"))
    preset = Preset(path=path, fit_config=find_config(raw["fit_config"], path.parent),
                    overrides=dict(raw.get("overrides") or {}), define_methods=defined)
    for key in ("methods", "seeds", "eval_split", "isolation", "threads"):
        if key in raw:
            setattr(preset, key, raw[key])
    check_preset(preset)
    return preset


def check_preset(preset: Preset) -> None:
    unknown = [m for m in preset.methods if m not in preset.registry]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(preset.registry)}")
    if not isinstance(preset.seeds, int) or preset.seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {preset.seeds!r}")
    if preset.eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {preset.eval_split!r}")
    if preset.threads is not None and (not isinstance(preset.threads, int) or preset.threads < 1):
        raise ValueError(f"threads must be an integer >= 1 or null, got {preset.threads!r}")
    if preset.isolation not in ("subprocess", "inprocess"):
        raise ValueError(f"isolation must be 'subprocess' or 'inprocess', got {preset.isolation!r}")


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``config["a"]["b"]["c"] = value`` for ``key = "a.b.c"`` (missing levels are created)."""
    *parents, last = key.split(".")
    node = config
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {key!r}: {'.'.join(parents[:i + 1])} is {node!r}, not a mapping")
    node[last] = value


def get_dotted(config: Mapping, key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _pop_dotted(config: dict, key: str) -> None:
    *parents, last = key.split(".")
    node = get_dotted(config, ".".join(parents)) if parents else config
    if isinstance(node, dict):
        node.pop(last, None)


@dataclass
class Run:
    """One training and evaluation: ``method`` at ``seed`` (and ``task`` for per-task methods)."""

    name: str
    method: str
    seed: int
    task: str | None
    config: dict  # the fit config with every override applied, before LightningCLI fills defaults
    directory: Path
    resolved: dict | None = None  # LightningCLI's full config (None: it could not be parsed)
    key: str = ""
    error: str | None = None  # why the config could not be resolved
    text: str = ""  # the resolved config as YAML (what config.yaml holds)


def base_config(preset: Preset) -> dict:
    """The fit config with the preset's overrides applied."""
    config = yaml.safe_load(preset.fit_config.read_text()) or {}
    for key, value in preset.overrides.items():
        set_dotted(config, key, value)
    return config


def plan_runs(preset: Preset, out: Path, methods: Sequence[str] | None = None, seeds: int | None = None) -> list[Run]:
    """Every run of the benchmark, the reference (``stl``) first, then methods in the given order."""
    registry = preset.registry
    methods = list(dict.fromkeys(methods if methods is not None else preset.methods))
    unknown = [m for m in methods if m not in registry]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(registry)}")
    methods = [REFERENCE] + [m for m in methods if m != REFERENCE]
    seeds = preset.seeds if seeds is None else seeds
    base = base_config(preset)
    tasks = get_dotted(base, "data.init_args.tasks")
    if not tasks:
        raise ValueError(f"{preset.fit_config}: data.init_args.tasks is not set; the benchmark needs the task list")
    runs = []
    for method in methods:
        spec = registry[method]
        for seed in range(seeds):
            for task in (tasks if spec.per_task else [None]):
                name = f"{method}-seed{seed}" + (f"-{task}" if task else "")
                config = json.loads(json.dumps(base))  # deep copy of plain YAML data
                for key, value in spec.overrides.items():
                    set_dotted(config, key, value)
                config["seed_everything"] = seed
                if task:  # that task alone, with its own loss weight, options and decoder stride
                    set_dotted(config, "data.init_args.tasks", [task])
                    for key in PER_TASK_NET_ARGS:
                        mapping = get_dotted(config, NET + key)
                        if isinstance(mapping, dict):
                            set_dotted(config, NET + key, {k: v for k, v in mapping.items() if k == task})
                directory = out / "runs" / name
                set_dotted(config, "trainer.default_root_dir", str(directory.resolve()))
                set_dotted(config, "trainer.enable_progress_bar", False)
                set_dotted(config, "trainer.enable_model_summary", False)
                runs.append(Run(name, method, seed, task, config, directory))
    return runs


# --------------------------------------------------------------------------- LightningCLI


def _cli_class(resolve_only: bool = False):
    from vtagml.cli import VTAGMLCLI

    if not resolve_only:
        return VTAGMLCLI

    class ResolveOnly(VTAGMLCLI):
        """Parses and checks a config (defaults filled in, types checked) and instantiates nothing."""

        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    return ResolveOnly


def make_cli(args: dict | list[str], resolve_only: bool = False):
    """The library's LightningCLI (as ``vtagml fit`` builds it) on ``args``, without running a subcommand."""
    from vtagml.data.datamodule import MultitaskDataModule
    from vtagml.engine.module import MultitaskModule

    # the benchmark's own command line is not LightningCLI's: ``args`` is the whole configuration
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended to run from within Python.*")
    return _cli_class(resolve_only)(MultitaskModule, MultitaskDataModule, subclass_mode_data=True, args=args,
                                    run=False, save_config_callback=None, auto_configure_optimizers=False,
                                    parser_kwargs={"exit_on_error": False})  # errors raise, naming the key


def resolve_config(config: dict) -> tuple[dict, str]:
    """LightningCLI's full config for ``config`` (every default filled in): as a dict and as the YAML
    that ``vtagml fit --config`` takes."""
    cli = make_cli(config, resolve_only=True)
    text = cli.parser.dump(cli.config)
    return yaml.safe_load(text), text


_FILE_DIGESTS: dict[tuple[str, float, int], str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def run_key(resolved: Mapping, eval_split: str, threads: int | None = None) -> str:
    """SHA-256 of what determines a run's result: its resolved config without :data:`UNHASHED_KEYS`,
    local backbone weights by content (not path), the evaluation split, the thread count (speed is a
    result too) and :data:`RESULT_VERSION`."""
    from vtagml import __version__
    from vtagml.models.backbone import resolve_checkpoint_path

    config = json.loads(json.dumps(resolved, default=str))
    for key in UNHASHED_KEYS:
        _pop_dotted(config, key)
    ckpt = get_dotted(config, NET + "checkpoint_path")
    if ckpt:
        try:
            path = resolve_checkpoint_path(ckpt)
        except FileNotFoundError:
            path = None
        if path is not None and path.is_file():
            set_dotted(config, NET + "checkpoint_path", f"sha256:{_file_digest(path)}")
    identity = dict(config=config, eval_split=eval_split, threads=threads, result_version=RESULT_VERSION,
                    vtagml=__version__)
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def fit_flags(overrides: Mapping[str, Any]) -> str:
    """``--key value`` flags of ``vtagml fit`` for dotted overrides (YAML/JSON values)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        if isinstance(v, (list, dict)):
            return "'" + json.dumps(v) + "'"
        return str(v)
    return " ".join(f"--{k} {value(v)}" for k, v in overrides.items())


# --------------------------------------------------------------------------- one run


def _train_meter():
    """A Lightning callback that sums the time inside training steps (forward, backward, optimizer
    step; data loading excluded) and counts the images trained."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class TrainMeter(Callback):
        def __init__(self):
            self.images, self.seconds, self._start = 0, 0.0, 0.0

        @staticmethod
        def _sync(module):
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._sync(pl_module)
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._sync(pl_module)
            self.seconds += time.perf_counter() - self._start
            self.images += int(batch["image"].shape[0])

    return TrainMeter()


def _peak_memory_mb(device) -> tuple[float, str]:
    """Peak memory of this run: CUDA max allocated on a GPU, else this process's peak resident set."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


def execute_run(directory: Path, eval_split: str, threads: int | None = None) -> dict:
    """Train and evaluate the run whose ``config.yaml`` is in ``directory``; returns its measurements.

    Builds everything through LightningCLI from that file, exactly as ``vtagml fit --config`` would,
    then tests the trained model on ``eval_split``.
    """
    import torch

    from vtagml.machine import describe_device
    from vtagml.tasks import primary_metrics

    if threads:
        torch.set_num_threads(threads)
    start, cpu_start = time.time(), time.process_time()
    cli = make_cli(["--config", str(directory / RUN_CONFIG)])
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    meter = _train_meter()
    trainer.callbacks.append(meter)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    fit_start = time.time()
    trainer.fit(module, datamodule=data)
    fit_seconds = time.time() - fit_start
    eval_start = time.time()
    if eval_split == "val":
        trainer.test(module, dataloaders=data.val_dataloader(), verbose=False)
    else:
        trainer.test(module, datamodule=data, verbose=False)
    eval_seconds = time.time() - eval_start
    net = module.net
    split_data = data.datasets.get(eval_split)
    eval_images = len(split_data) if split_data is not None else None
    report = net.parameter_report()
    net.save_adapters(directory / RUN_MODEL)
    memory, memory_kind = _peak_memory_mb(module.device)
    metric_dirs = {f"{t}/{n}": bool(m.higher_is_better) for t, group in module.test_metrics.items()
                   for n, m in group.items()}
    return dict(
        metrics={k: float(v) for k, v in module.last_test_metrics.items()},
        primary=primary_metrics(net.tasks),
        higher_is_better=metric_dirs,
        task_weights={t.name: t.weight for t in net.tasks},
        parameters=dict(trainable=report["total"]["trainable"],
                        total=report["total"]["trainable"] + report["total"]["frozen"],
                        per_component={k: v for k, v in report.items() if isinstance(v, dict) and k != "total"}),
        train_images=meter.images,
        train_step_seconds=round(meter.seconds, 3),
        train_images_per_s=round(meter.images / meter.seconds, 2) if meter.seconds > 0 else None,
        epochs=trainer.current_epoch, steps=trainer.global_step,
        fit_seconds=round(fit_seconds, 2), eval_seconds=round(eval_seconds, 2), eval_images=eval_images,
        peak_memory_mb=round(memory, 1), memory_kind=memory_kind, device=str(module.device),
        machine=describe_device(module.device), threads=torch.get_num_threads(),
        run_seconds=round(time.time() - start, 2), cpu_seconds=round(time.process_time() - cpu_start, 2),
    )


def _write_json(path: Path, data: dict) -> None:
    from vtagml.data.io import atomic_write

    text = json.dumps(data, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), fsync=False)


def _failure(error: str, trace: str = "") -> dict:
    return dict(status="failed", error=error, traceback=trace)


def _run_here(run: Run, eval_split: str, threads: int | None = None) -> dict:
    try:
        return dict(status="ok", **execute_run(run.directory, eval_split, threads))
    except Exception as err:  # a failed run is a result; interrupts (BaseException) stop the benchmark
        return _failure(f"{type(err).__name__}: {err}", traceback.format_exc())


#: Fields of result.json that identify a run (the rest are its measurements).
_RUN_FIELDS = ("name", "method", "seed", "task", "key", "result_version", "config", "command")


def _run_in_subprocess(run: Run, eval_split: str, threads: int | None = None) -> dict:
    """``python -m vtagml.benchmark --run-one DIR``: the child writes ``result.json`` itself."""
    result_path = run.directory / RUN_RESULT
    cmd = [sys.executable, "-m", "vtagml.benchmark", "--run-one", str(run.directory), "--eval-split", eval_split]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        cmd += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)
    with open(run.directory / RUN_LOG, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result.get("key") == run.key:
            return {k: v for k, v in result.items() if k not in _RUN_FIELDS}
    tail = "".join((run.directory / RUN_LOG).read_text(errors="replace").splitlines(keepends=True)[-15:])
    return _failure(f"run process exited with code {proc.returncode} and no result; last lines of its log:\n{tail}")


def _record(run: Run, result: dict) -> dict:
    return dict(name=run.name, method=run.method, seed=run.seed, task=run.task, key=run.key,
                result_version=RESULT_VERSION, command=f"vtagml fit --config {run.directory / RUN_CONFIG}", **result)


def _child_main(directory: Path, eval_split: str, threads: int | None) -> None:
    """Entry point of a subprocess run: execute, then write ``result.json`` (also on failure)."""
    config = yaml.safe_load((directory / RUN_CONFIG).read_text())
    meta = json.loads((directory / "run.json").read_text())
    run = Run(meta["name"], meta["method"], meta["seed"], meta["task"], config, directory, key=meta["key"])
    result = _run_here(run, eval_split, threads)
    _write_json(directory / RUN_RESULT, _record(run, result))
    if result["status"] != "ok":
        print(result["traceback"], file=sys.stderr)
        raise SystemExit(1)


# --------------------------------------------------------------------------- summary


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Row:
    """One method's line of the table."""

    method: str
    runs_ok: int
    runs_total: int
    metrics: dict[str, tuple[float | None, float | None]]  # "task/metric" -> (mean, std) over seeds
    delta_m: tuple[float | None, float | None]
    trainable: int | None
    total: int | None
    images_per_s: float | None
    peak_memory_mb: float | None
    errors: list[str]
    note: str = ""

    @property
    def status(self) -> str:
        if self.runs_ok == self.runs_total:
            return "ok"
        return "FAILED" if self.runs_ok == 0 else "partial"


def _seed_groups(records: Iterable[dict], method: str, tasks: Sequence[str], per_task: bool) -> dict[int, list[dict]]:
    """seed -> the records of that seed (per-task methods: one per task)."""
    groups: dict[int, list[dict]] = {}
    for r in records:
        if r["method"] == method:
            groups.setdefault(r["seed"], []).append(r)
    if per_task:  # order by task
        groups = {s: sorted(g, key=lambda r: tasks.index(r["task"]) if r["task"] in tasks else len(tasks))
                  for s, g in groups.items()}
    return dict(sorted(groups.items()))


def summarize(records: Sequence[dict], methods: Sequence[str], tasks: Sequence[str],
              per_task: Iterable[str] = (REFERENCE,)) -> tuple[list[Row], dict[str, str], dict[str, bool]]:
    """Table rows from run records (``result.json`` contents).

    Each task's metric is the mean ± sample std over the seeds whose run of that task finished. Δm
    is computed per seed whose runs all finished (per-task methods: every task), with
    :func:`~vtagml.tasks.metrics.multitask_gain` against the reference's mean over its seeds, so the
    mean Δm is the Δm of the mean metrics and the reference row's own spread is its seed noise.
    Per-task methods report parameters summed over their models, images/s of all of them on one
    image (``1 / sum(1 / r_t)``) and the largest peak memory.

    Returns:
        rows, primary metric of each task, and ``higher_is_better`` of each ``"task/metric"``.
    """
    from vtagml.tasks.metrics import multitask_gain

    per_task = set(per_task)
    ok = [r for r in records if r.get("status") == "ok"]
    primary: dict[str, str] = {}
    directions: dict[str, bool] = {}
    for r in ok:
        primary.update(r["primary"])
        directions.update(r["higher_is_better"])
    primary = {t: primary[t] for t in tasks if t in primary}
    keys = [f"{t}/{m}" for t, m in primary.items()]

    def seed_metrics(method: str) -> dict[int, dict[str, float]]:
        out = {}
        for seed, group in _seed_groups(records, method, tasks, method in per_task).items():
            if all(r.get("status") == "ok" for r in group):
                merged: dict[str, float] = {}
                for r in group:
                    merged.update(r["metrics"])
                out[seed] = merged
        return out

    reference = None
    ref_seeds = seed_metrics(REFERENCE)
    if ref_seeds and all(all(k in m for k in keys) for m in ref_seeds.values()) and keys:
        reference = {k: _mean_std([m[k] for m in ref_seeds.values()])[0] for k in keys}

    rows = []
    for method in methods:
        groups = _seed_groups(records, method, tasks, method in per_task)
        runs = [r for g in groups.values() for r in g]
        seeds = seed_metrics(method)
        # per task: every ok run contributes, even when another task of its seed failed
        metrics = {}
        for k in keys:
            values = [r["metrics"][k] for r in runs if r.get("status") == "ok" and k in r["metrics"]]
            metrics[k] = _mean_std(values)
        deltas = []
        note = ""
        if reference is None:
            note = f"no Δm: {REFERENCE} has no finished run of every task"
        else:
            for m in seeds.values():
                if all(k in m for k in keys):
                    deltas.append(multitask_gain(m, reference, directions, primary))
        ok_runs = [r for r in runs if r.get("status") == "ok"]
        by_seed_ok = [g for g in groups.values() if all(r.get("status") == "ok" for r in g)]
        trainable = total = ips = None
        if by_seed_ok:
            first = by_seed_ok[0]
            trainable = sum(r["parameters"]["trainable"] for r in first)
            total = sum(r["parameters"]["total"] for r in first)
            rates = []
            for g in by_seed_ok:
                if all(r.get("train_images_per_s") for r in g):
                    rates.append(1.0 / sum(1.0 / r["train_images_per_s"] for r in g))
            ips = _mean_std(rates)[0]
        memory = max((r["peak_memory_mb"] for r in ok_runs if r.get("peak_memory_mb") is not None), default=None)
        errors = [f"{r['name']}: {r.get('error', '')}" for r in runs if r.get("status") != "ok"]
        rows.append(Row(method, len(ok_runs), len(runs), metrics, _mean_std(deltas), trainable, total, ips, memory,
                        errors, note))
    return rows, primary, directions


# --------------------------------------------------------------------------- tables and plot

_METRIC_NAMES = {"miou": "mIoU", "rmse": "RMSE", "mean_angle": "mean angle", "odsf": "ODS-F", "mae": "MAE"}


def _fmt(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "FAILED"
    text = f"{mean:.{digits}g}"
    return text + (f" ± {std:.2g}" if std is not None else "")


def _fmt_count(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _header(key: str, directions: Mapping[str, bool]) -> str:
    task, metric = key.split("/", 1)
    arrow = "↑" if directions.get(key) else "↓"
    return f"{task} {_METRIC_NAMES.get(metric, metric)} {arrow}"


def markdown_table(rows: Sequence[Row], primary: Mapping[str, str], directions: Mapping[str, bool]) -> str:
    keys = [f"{t}/{m}" for t, m in primary.items()]
    head = ["method", *[_header(k, directions) for k in keys], "Δm % ↑", "trainable", "total", "train img/s",
            "peak memory", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.runs_ok == 0:
            cells = ["FAILED"] * (len(keys) + 1) + [""] * 4
        else:
            cells = [_fmt(*row.metrics[k]) for k in keys]
            dm_mean, dm_std = row.delta_m
            spread = f" ± {dm_std:.2f}" if dm_std is not None else ""
            cells.append("n/a" if dm_mean is None else f"{dm_mean:+.2f}{spread}")
            cells += [_fmt_count(row.trainable), _fmt_count(row.total),
                      "" if row.images_per_s is None else f"{row.images_per_s:.1f}",
                      "" if row.peak_memory_mb is None else f"{row.peak_memory_mb:,.0f} MB"]
        flag = {"ok": "", "partial": " partly FAILED", "FAILED": " FAILED"}[row.status]
        runs = f"{row.runs_ok}/{row.runs_total}{flag}"
        lines.append("| " + " | ".join([row.method, *cells, runs]) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Row], primary: Mapping[str, str]) -> None:
    """One line per method: status, each task's primary metric mean and std, Δm, parameters, speed, memory."""
    keys = [f"{t}/{m}" for t, m in primary.items()]
    fields = ["method", "status", "runs_ok", "runs_total", *[c for k in keys for c in (k, f"{k}_std")],
              "delta_m", "delta_m_std", "trainable_params", "total_params", "train_images_per_s", "peak_memory_mb",
              "errors"]

    def num(x, digits=6):
        return "" if x is None else round(x, digits)

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in rows:
            values = [row.method, row.status, row.runs_ok, row.runs_total]
            for k in keys:
                values += [num(row.metrics[k][0]), num(row.metrics[k][1])]
            values += [num(row.delta_m[0], 4), num(row.delta_m[1], 4), "" if row.trainable is None else row.trainable,
                       "" if row.total is None else row.total, num(row.images_per_s, 2), num(row.peak_memory_mb, 1),
                       " | ".join(e.splitlines()[0] if e else "" for e in row.errors)]
            writer.writerow(values)


def plot(path: Path, rows: Sequence[Row], primary: Mapping[str, str], directions: Mapping[str, bool]) -> None:
    """One panel per task (its primary metric by method) plus Δm; error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"{t}/{m}" for t, m in primary.items()] + ["Δm"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    names = [r.method for r in rows]
    colors = plt.get_cmap("tab10")
    for ax, key in zip(axes[0], keys):
        stats = [r.delta_m if key == "Δm" else r.metrics[key] for r in rows]
        for i, (mean, std) in enumerate(stats):
            if mean is None:
                ax.annotate("FAILED" if key != "Δm" else "n/a", (i, 0.5), xycoords=("data", "axes fraction"),
                            rotation=90, ha="center", va="center", fontsize=7, color="0.4")
            elif key == "Δm":
                ax.bar(i, mean, yerr=std or 0.0, capsize=3, color=colors(i % 10))
            else:  # points, not bars: the axis is zoomed on the differences and does not start at 0
                ax.errorbar(i, mean, yerr=std or 0.0, fmt="o", capsize=3, color=colors(i % 10))
        if key == "Δm":
            ax.axhline(0.0, color="k", lw=0.8)
            ax.set_title(f"Δm vs {REFERENCE} (%) ↑", fontsize=9)
        else:
            ref = next((r for r in rows if r.method == REFERENCE), None)
            if ref is not None and ref.metrics[key][0] is not None:
                ax.axhline(ref.metrics[key][0], color="k", ls="--", lw=0.8)
            ax.set_title(_header(key, directions), fontsize=9)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", lw=0.3)
    fig.suptitle(f"mean ± std over seeds (dashed: {REFERENCE})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_SETTING_KEYS = ("seed_everything", "trainer.max_epochs", "trainer.max_steps", "trainer.precision",
                 "trainer.gradient_clip_val", "trainer.accumulate_grad_batches", "trainer.limit_val_batches",
                 NET + "backbone", NET + "img_size", NET + "pretrained", NET + "checkpoint_path", NET + "adapt_last_k",
                 NET + "embed_dim", NET + "task_weights", NET + "decoder", NET + "decoder_channels",
                 "model.optimizer", "model.lr",
                 "model.weight_decay", "model.schedule", "model.warmup", "data.class_path", "data.init_args.dataset",
                 "data.init_args.root", "data.init_args.size", "data.init_args.train_samples",
                 "data.init_args.test_samples", "data.init_args.val_samples", "data.init_args.seed",
                 "data.init_args.crop_size", "data.init_args.scale_range", "data.init_args.eval_size",
                 "data.init_args.batch_size")


def _settings(resolved: Mapping, record: dict | None) -> list[str]:
    lines = []
    for key in _SETTING_KEYS:
        value = get_dotted(resolved, key, "<unset>")
        if value != "<unset>" and not (key.endswith("seed_everything")):
            lines.append(f"- `{key}`: `{json.dumps(value)}`")
    if record and record.get("task_weights"):
        weights = ", ".join(f"{t} {w:g}" for t, w in record["task_weights"].items())
        lines.append(f"- loss weights (as instantiated): {weights}")
    return lines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def write_report(out: Path, preset: Preset, runs: Sequence[Run], records: Sequence[dict], methods: Sequence[str],
                 seeds: int, command: str, wall_seconds: float) -> list[Row]:
    """``benchmark.md``, ``benchmark.csv``, ``benchmark.png`` and ``benchmark.json`` in ``out``."""
    base = base_config(preset)
    tasks = list(get_dotted(base, "data.init_args.tasks"))
    registry = preset.registry
    per_task = [m for m in methods if registry[m].per_task]
    rows, primary, directions = summarize(records, methods, tasks, per_task)
    if not primary:  # nothing finished: keep the columns
        primary = {t: "?" for t in tasks}
        for row in rows:
            row.metrics = {f"{t}/?": (None, None) for t in tasks}
    write_csv(out / "benchmark.csv", rows, primary)
    plot(out / "benchmark.png", rows, primary, directions)

    by_name = {r["name"]: r for r in records}
    first_ok = next((r for r in records if r.get("status") == "ok" and r["method"] != REFERENCE), None) or \
        next((r for r in records if r.get("status") == "ok"), None)
    resolved = next((run.resolved for run in runs if run.resolved and run.method != REFERENCE), None) or \
        next((run.resolved for run in runs if run.resolved), {})
    device = first_ok.get("device", "?") if first_ok else "?"
    threads = first_ok.get("threads") if first_ok else None
    # runs may come from the cache or a resumed benchmark on another host: name every machine
    machines = sorted({r["machine"] for r in records if r.get("status") == "ok" and r.get("machine")})
    machine = "; ".join(machines)
    if len(machines) > 1:
        machine += " (timings from different machines: compare img/s within one)"
    memory_kind = first_ok.get("memory_kind", "") if first_ok else ""
    eval_images = first_ok.get("eval_images") if first_ok else None
    md = [f"# vtagml benchmark: {preset.path.stem}", "",
          f"`{command}`", "",
          f"Preset `{preset.path}`, fit config `{preset.fit_config}`; {seeds} seed(s) per method "
          f"(`seed_everything` 0..{seeds - 1}; the data keep their own seed, so every run has the same splits); "
          f"every model evaluated on the `{preset.eval_split}` split"
          + (f" ({eval_images} images)" if eval_images else "") + f"; device `{device}`"
          + (f" ({machine})" if machine else f" ({threads} CPU thread(s) per run)" if threads and device == "cpu"
             else "") + "; runs isolated: "
          f"{preset.isolation}; benchmark wall time {_duration(wall_seconds)} (this invocation).", "",
          markdown_table(rows, primary, directions), "",
          f"Metrics: mean ± sample standard deviation over seeds. Δm (%): multitask gain against `{REFERENCE}` "
          f"(the mean of its seeds), averaged over tasks with one primary metric each, sign by the metric's "
          f"direction; its ± is the spread over this method's seeds, and the `{REFERENCE}` row's own spread is "
          f"the seed noise of the reference. With few seeds the std is itself rough: treat a difference smaller "
          f"than about twice the larger std as noise. `{REFERENCE}`: {len(tasks)} single-task models, parameters "
          f"summed over them, img/s of all of them on one image (1 / Σ 1/r_t), memory the largest. Trainable: "
          f"parameters that require gradients. Train img/s: images over time inside training steps (forward, "
          f"backward, optimizer; data loading excluded). Peak memory: "
          + ("CUDA max allocated." if memory_kind == "cuda_max_allocated" else
             "peak resident set of the run's process (everything, Python and data included)"
             + ("; in-process runs report the whole benchmark process so far." if preset.isolation == "inprocess"
                else ".")), ""]
    notes = [f"- `{r.method}`: {r.note}" for r in rows if r.note]
    errors = [f"- {e.splitlines()[0] if e else ''}" for r in rows for e in r.errors]
    if notes or errors:
        md += ["## Failures and notes", "", *notes, *errors, ""]
    md += ["## Settings (resolved config of the runs)", "", *_settings(resolved, first_ok), ""]
    md += ["## Methods", "", "Each run is a `vtagml fit` config: `vtagml fit --config DIR/runs/<run>/config.yaml` "
           "trains it alone. Relative to the preset's fit config and overrides, each method is:", "",
           "| method | what | `vtagml fit --config FIT_CONFIG` flags |", "|---|---|---|"]
    preset_flags = fit_flags(preset.overrides)
    for m in methods:
        spec = registry[m]
        flags = fit_flags(spec.overrides) + (" --data.init_args.tasks '[TASK]'" if spec.per_task else "")
        md.append(f"| `{m}` | {spec.description} | `{flags}` |")
    md += ["", f"Preset overrides (every run): `{preset_flags or '(none)'}`; seed k: `--seed_everything k`.", ""]
    md += ["## Runs", "", "| run | status | wall | train img/s | epochs | "
           + " | ".join(f"{t}/{m}" for t, m in primary.items()) + " |",
           "|" + "---|" * (5 + len(primary))]
    for run in runs:
        r = by_name.get(run.name, {})
        status = r.get("status", "not run")
        wall = _duration(r["run_seconds"]) if r.get("run_seconds") else ""
        values = [f"{r['metrics'][f'{t}/{m}']:.4g}" if status == "ok" and f"{t}/{m}" in r.get("metrics", {}) else ""
                  for t, m in primary.items()]
        status = ("FAILED" if status == "failed" else status) + (" (cached)" if r.get("cached") else "")
        md.append(f"| {run.name} | {status} | {wall} | {r.get('train_images_per_s') or ''} | {r.get('epochs', '')} | "
                  + " | ".join(values) + " |")
    (out / "benchmark.md").write_text("\n".join(md) + "\n")
    _write_json(out / "benchmark.json", dict(
        command=command, preset=str(preset.path), fit_config=str(preset.fit_config), seeds=seeds, methods=list(methods),
        primary=primary, rows=[row.__dict__ | {"status": row.status} for row in rows],
        runs=[by_name.get(run.name, {"name": run.name, "status": "not run"}) for run in runs]))
    return rows


# --------------------------------------------------------------------------- the benchmark


def _cached_results(out: Path) -> dict[str, dict]:
    """key -> finished (ok) result found anywhere under ``out/runs``."""
    found = {}
    for path in sorted((out / "runs").glob(f"*/{RUN_RESULT}")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("status") == "ok" and result.get("key") and result.get("result_version") == RESULT_VERSION:
            found.setdefault(result["key"], result)
    return found


def _prepare(run: Run, eval_split: str, threads: int | None) -> None:
    """Resolve the run's config (errors make the run fail, not the benchmark) and compute its key."""
    try:
        run.resolved, text = resolve_config(run.config)
    except Exception as err:
        run.error = f"invalid config: {type(err).__name__}: {err}"
        run.key = hashlib.sha256(json.dumps(run.config, sort_keys=True, default=str).encode()).hexdigest()
        return
    run.key, run.text = run_key(run.resolved, eval_split, threads), text


def _write_run_files(run: Run) -> None:
    """A fresh run folder with its ``config.yaml`` (a `vtagml fit` config) and ``run.json``."""
    if run.directory.exists():
        shutil.rmtree(run.directory)
    run.directory.mkdir(parents=True)
    text = run.text or yaml.safe_dump(run.config, sort_keys=False)
    header = (f"# vtagml benchmark run {run.name} (method {run.method}, seed {run.seed}"
              + (f", task {run.task}" if run.task else "") + f")\n# train it alone: vtagml fit --config "
              f"{run.directory / RUN_CONFIG}\n")
    (run.directory / RUN_CONFIG).write_text(header + text)
    (run.directory / "run.json").write_text(json.dumps(dict(name=run.name, method=run.method, seed=run.seed,
                                                            task=run.task, key=run.key), indent=2))


def _num_tasks(run: Run) -> int:
    return 1 if run.task else len(get_dotted(run.config, "data.init_args.tasks") or [None])


def _eta(pending: Sequence[Run], finished: Sequence[tuple[Run, float]]) -> str:
    """Time left: each pending run takes the mean time of the finished runs of its method, else the
    mean time per task of all finished runs times its task count."""
    if not pending:
        return "ETA 0m00s"
    if not finished:
        return "ETA unknown"
    by_method: dict[str, list[float]] = {}
    for run, seconds in finished:
        by_method.setdefault(run.method, []).append(seconds)
    per_task = sum(s for _, s in finished) / sum(_num_tasks(r) for r, _ in finished)
    left = sum(sum(by_method[r.method]) / len(by_method[r.method]) if r.method in by_method
               else per_task * _num_tasks(r) for r in pending)
    return f"ETA {_duration(left)}"


def run_benchmark(preset: Preset | str | os.PathLike, out: str | os.PathLike, methods: Sequence[str] | None = None,
                  seeds: int | None = None, isolation: str | None = None, threads: int | None = None,
                  dry_run: bool = False, command: str = "", log=print) -> list[Row]:
    """Plan, run (or reuse) and report every run; returns the table rows (``[]`` for a dry run).
    ``isolation`` and ``threads`` override the preset's."""
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    if isolation is not None:
        preset.isolation = isolation
    if threads is not None:
        preset.threads = threads
    check_preset(preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = preset.seeds if seeds is None else seeds
    runs = plan_runs(preset, out, methods, seeds)
    method_names = list(dict.fromkeys(r.method for r in runs))
    command = command or f"vtagml benchmark --config {preset.path} --out {out}"
    for run in runs:
        _prepare(run, preset.eval_split, preset.threads)
    if dry_run:
        for run in runs:
            _write_run_files(run)
            log(f"{run.name}: " + (run.error or f"vtagml fit --config {run.directory / RUN_CONFIG}"))
        for m in method_names:
            spec = preset.registry[m]
            log(f"method {m}: vtagml fit --config {preset.fit_config} {fit_flags(preset.overrides)} "
                f"{fit_flags(spec.overrides)}" + (" --data.init_args.tasks '[TASK]'" if spec.per_task else ""))
        return []

    start = time.time()
    cached = _cached_results(out)
    todo = [r for r in runs if not (r.error is None and r.key in cached)]
    log(f"benchmark: {len(runs)} runs ({len(method_names)} methods x {seeds} seeds), {len(runs) - len(todo)} "
        f"cached, {len(todo)} to run; isolation {preset.isolation}; out {out}")
    records, finished = [], []
    for i, run in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {run.name}"
        if run.error is None and run.key in cached:
            result = {k: v for k, v in cached[run.key].items() if k not in _RUN_FIELDS}
            if cached[run.key]["name"] != run.name:  # another run (another method) with this config
                result["reused_from"] = cached[run.key]["name"]
                _write_run_files(run)
                _write_json(run.directory / RUN_RESULT, _record(run, result))
            records.append({**_record(run, result), "cached": True})
            log(f"{prefix}: cached" + (f" (same config as {result['reused_from']})" if "reused_from" in result else ""))
            continue
        pending = todo[len(finished):]
        log(f"{prefix}: start (elapsed {_duration(time.time() - start)}, {len(pending)} to run, "
            f"{_eta(pending, finished)})")
        run_start = time.time()
        _write_run_files(run)
        if run.error is not None:
            result = _failure(run.error)
        elif preset.isolation == "subprocess":
            result = _run_in_subprocess(run, preset.eval_split, preset.threads)
        else:
            result = _run_here(run, preset.eval_split, preset.threads)
        if result["status"] != "ok":
            result.setdefault("run_seconds", round(time.time() - run_start, 2))
        record = _record(run, result)
        _write_json(run.directory / RUN_RESULT, record)
        records.append(record)
        finished.append((run, time.time() - run_start))
        if record["status"] == "ok":
            summary = ", ".join(f"{t}/{m} {record['metrics'][f'{t}/{m}']:.4g}" for t, m in record["primary"].items())
            detail = f"{summary}; {record.get('train_images_per_s')} img/s"
        else:
            detail = "FAILED: " + record["error"].splitlines()[0]
        log(f"{prefix}: done in {_duration(finished[-1][1])}: {detail} (elapsed {_duration(time.time() - start)}, "
            f"{_eta(todo[len(finished):], finished)})")
    rows = write_report(out, preset, runs, records, method_names, seeds, command, time.time() - start)
    failed = sum(r.get("status") != "ok" for r in records)
    log(f"benchmark: {len(runs) - failed}/{len(runs)} runs ok, {len(finished)} trained now, "
        f"{_duration(time.time() - start)}; wrote {out}/benchmark.md, benchmark.csv, benchmark.png")
    return rows


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--run-one"]:  # a subprocess run (internal)
        child = argparse.ArgumentParser(prog="vtagml.benchmark --run-one")
        child.add_argument("--run-one", type=Path, required=True)
        child.add_argument("--eval-split", default="test")
        child.add_argument("--threads", type=int, default=None)
        ns = child.parse_args(args)
        _child_main(ns.run_one, ns.eval_split, ns.threads)
        return
    methods_help = "methods: " + "; ".join(f"{k}: {m.description}" for k, m in METHODS.items())
    parser = argparse.ArgumentParser(prog="vtagml benchmark", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=methods_help)
    parser.add_argument("--config", required=True,
                        help="benchmark preset (a file, or a packaged one: benchmark_synthetic.yaml, "
                             "benchmark_nyudv2.yaml, benchmark_taskonomy.yaml)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="methods to run (space or comma separated; 'all'); default: the preset's. "
                             f"{REFERENCE} is always trained (the Δm reference)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method (default: the preset's)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs are cached in OUT/runs)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra overrides of every run after the preset's, as dotted fit-config keys with "
                             "YAML values, e.g. --set trainer.devices=4 data.init_args.root=/data/NYUD_MT")
    parser.add_argument("--isolation", choices=("subprocess", "inprocess"), default=None,
                        help="run each run in its own process (default) or in this one")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per run (default: the preset's, else one per core); 1 on a shared CPU")
    parser.add_argument("--dry-run", action="store_true",
                        help="write every run's config.yaml, print the plan and `vtagml fit` commands; train nothing")
    ns = parser.parse_args(args)
    methods = None
    if ns.methods:
        methods = [m for item in ns.methods for m in item.split(",") if m]
        if methods == ["all"]:
            methods = list(METHODS)
    preset = load_preset(ns.config)
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"vtagml benchmark: --set takes KEY=VALUE, got {item!r}")
        preset.overrides[key] = yaml.safe_load(value)
    command = "vtagml benchmark " + " ".join(args)
    try:
        run_benchmark(preset, ns.out, methods, ns.seeds, ns.isolation, ns.threads, ns.dry_run, command=command,
                      log=lambda msg: print(msg, flush=True))
    except ValueError as err:
        raise SystemExit(f"vtagml benchmark: {err}") from None


if __name__ == "__main__":
    main()
