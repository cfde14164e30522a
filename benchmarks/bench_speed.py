"""All-task speed, FLOPs and training memory: vtagml against the official structure and bare timm.

Variants, all with the same Swin weights, measured side by side in one run (round-robin repeats,
median), printed as one table of ratios:

- ``official``: the official implementation's structure. For each task the whole batch runs through
  the whole Swin encoder (trunk and adapted blocks, conditioned on that task), then that task's
  Swin-UNet decoder and head. It trains everything: the whole Swin, adapters, decoders and heads.
- ``fpn`` / ``swin_unet``: vtagml with that decoder (trunk once per image, adapted blocks batched
  over tasks). Trains adapters, decoders and heads (the Swin frozen): the trainer's step,
  ``MultitaskModule.supervised_step`` with TROA, backward, TROA update, AdamW step.
- ``fpn_cached``: ``fpn`` with the trunk cache (``trunk_cache_gb``) at a later epoch, when the
  batch's images are cached and the trunk is skipped (its inference is ``fpn``'s: new images).
- ``bare``: timm's ``forward_features`` of the plain Swin (inference only).

FLOPs come from ``torch.utils.flop_counter``. The floor of a backbone is its trunk once plus T passes
of its adapted blocks (from the bare model's per-module counts); decoders and heads are listed apart.
Peak memory of a training step = the variant's live tensors at the step's start (weights, buffers,
optimizer state, batch) + the step's peak allocation above that (CUDA: ``max_memory_allocated``;
CPU: the profiler's allocation events).

Usage:
    python benchmarks/bench_speed.py [--device cuda|cpu] [--cases demo,swin_t,swinv2_t,swin_b]
        [--precision fp32,bf16] [--repeats N] [--warmup N] [--batch N] [--inference-only] [--check-syncs]

``--inference-only`` skips the training steps (and ``fpn_cached``, whose inference is ``fpn``'s): the
Swin-B 448 rows on a CPU, where the official structure's training step needs more memory than a
laptop has.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vtagml import VTAGML
from vtagml.machine import describe_device
from vtagml.engine.module import MultitaskModule, task_losses
from vtagml.engine.trunk_cache import image_keys
from vtagml.models.backbone import create_backbone
from vtagml.pretrain import DEMO_BACKBONE, demo_weights_path

TASKS = ("semseg", "depth", "normals", "edges")
NUM_CLASSES = 6
ADAPT_LAST_K = 4
# Lightning's note when a module logs without a Trainer (the step runs bare here)
warnings.filterwarnings("ignore", message=r".*self\.log\(\)")


@dataclass
class Case:
    """A backbone, input size and batch (per device type); ``net`` holds extra VTAGML arguments."""

    name: str
    backbone: str
    size: int
    batch: dict[str, int]
    backbone_kwargs: dict = field(default_factory=dict)
    net: dict = field(default_factory=dict)
    checkpoint: Path | None = None


CASES = {
    "demo": Case("demo Swin 64", DEMO_BACKBONE["name"], DEMO_BACKBONE["img_size"], dict(cpu=16, cuda=16),
                 DEMO_BACKBONE["kwargs"], dict(embed_dim=64, decoder_channels=48), demo_weights_path()),
    "swin_t": Case("Swin-T 224", "swin_tiny_patch4_window7_224", 224, dict(cpu=4, cuda=32)),
    "swin_b": Case("Swin-B 448", "swin_base_patch4_window7_224", 448, dict(cpu=8, cuda=8)),
    # Swin V2 (res-post-norm blocks, cosine attention): the paper's Taskonomy backbone family
    "swinv2_t": Case("Swin V2-T 256", "swinv2_tiny_window8_256", 256, dict(cpu=4, cuda=32)),
}


@dataclass
class Variant:
    """A forward over all tasks and, unless inference only, a training step (forward, backward, AdamW)."""

    model: nn.Module
    forward: Callable[[Tensor], object]
    step: Callable[[dict], None] | None = None
    optimizer: torch.optim.Optimizer | None = None


def make_batch(b: int, size: int, device: torch.device) -> dict[str, Tensor]:
    """Images in [0, 1] and a label of every task."""
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 3, size, size, generator=g),
             "semseg": torch.randint(0, NUM_CLASSES, (b, size, size), generator=g),
             "depth": torch.rand(b, 1, size, size, generator=g) * 5 + 0.5,
             "normals": torch.nn.functional.normalize(torch.randn(b, 3, size, size, generator=g), dim=1),
             "edges": (torch.rand(b, 1, size, size, generator=g) > 0.9).float()}
    return {k: v.to(device) for k, v in batch.items()}


def build_net(case: Case, checkpoint: Path, **kw) -> VTAGML:
    return VTAGML(case.backbone, tasks=TASKS, num_classes=NUM_CLASSES, img_size=case.size, checkpoint_path=checkpoint,
                  backbone_kwargs=case.backbone_kwargs, adapt_last_k=ADAPT_LAST_K, **{**case.net, **kw})


def _training(model: nn.Module, module: MultitaskModule, loss: Callable[[dict], Tensor]) -> tuple:
    """A step (loss, backward, ``module.on_after_backward``, AdamW step, grads freed) and its optimizer."""
    opt = torch.optim.AdamW(module.parameter_groups(), lr=1e-4)

    def step(batch: dict) -> None:
        model.train()
        loss(batch).backward()
        module.on_after_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, opt


class Official(nn.Module):
    """The official structure over a VTAGML's modules: per task, the whole batch through the whole
    encoder (trunk and adapted blocks conditioned on the task), then the task's decoder and head."""

    def __init__(self, net: VTAGML):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        net = self.net
        return {k: v for t in range(len(net.tasks)) for k, v in net.forward_branches(net.encode(images), [t]).items()}

    def loss(self, batch: dict) -> Tensor:
        net = self.net
        return sum(task_losses([task], net.forward_branches(net.encode(batch["image"]), [t]), batch)[task.name]
                   for t, task in enumerate(net.tasks))


def official_variant(case: Case, checkpoint: Path) -> Variant:
    """Swin-UNet decoders; everything trainable (the whole Swin, adapters, decoders, heads)."""
    official = Official(build_net(case, checkpoint, decoder="swin_unet", train_trunk=True, train_adapted_blocks=True))
    return Variant(official, official, *_training(official, MultitaskModule(official.net, troa=False), official.loss))


def vtagml_variant(case: Case, checkpoint: Path, decoder: str, trunk_cache_gb: float = 0.0) -> Variant:
    """vtagml as the trainer runs it (``supervised_step`` with TROA). With ``trunk_cache_gb``, a
    step of a later epoch: the batch's images are in the trunk cache (filled by the warmup step), so
    the trunk is skipped; the cache's own memory (the trunk outputs kept) is not in the peak."""
    module = MultitaskModule(build_net(case, checkpoint, decoder=decoder), troa=True, trunk_cache_gb=trunk_cache_gb)
    keys: dict[int, list[bytes]] = {}

    def loss(batch: dict) -> Tensor:
        if module.trunk_cache is not None:  # keyed once, on the host, as on_before_batch_transfer does
            if id(batch["image"]) not in keys:
                keys[id(batch["image"])] = image_keys(batch["image"].cpu())
            batch = dict(batch, trunk_keys=keys[id(batch["image"])])
        return module.supervised_step(batch, 1)[0]

    return Variant(module, module.net, *_training(module, module, loss))


def build_variants(case: Case, checkpoint: Path, device: torch.device, train: bool = True) -> dict[str, Variant]:
    bare = create_backbone(case.backbone, case.size, checkpoint_path=checkpoint, **case.backbone_kwargs)
    variants = dict(official=official_variant(case, checkpoint), fpn=vtagml_variant(case, checkpoint, "fpn"))
    if train:
        variants["fpn_cached"] = vtagml_variant(case, checkpoint, "fpn", trunk_cache_gb=1.0)
    variants.update(swin_unet=vtagml_variant(case, checkpoint, "swin_unet"), bare=Variant(bare, bare.forward_features))
    for v in variants.values():
        v.model.to(device)
    return variants


# ---------------------------------------------------------------------- FLOPs
def flop_counts(fn: Callable[[], object], batch_size: int) -> dict[str, float]:
    """FLOPs per image of ``fn()`` by module name (``"Global"``: the total), as FlopCounterMode counts."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return {name: sum(c.values()) / batch_size for name, c in counter.get_flop_counts().items()}


def backbone_floor(bare: nn.Module, images: Tensor, num_tasks: int = len(TASKS)) -> dict[str, float]:
    """Per image: ``trunk`` and ``adapted`` (last k blocks of stage S-1 and stage S) FLOPs of the
    bare Swin, and the ``floor`` of T tasks = trunk + T * adapted."""
    # called as a module so that counts are named by path; its pooled, normed head costs no counted FLOPs
    counts = flop_counts(lambda: bare(images), images.shape[0])
    root, stages = type(bare).__name__, len(bare.layers)
    depth = len(bare.layers[-2].blocks)
    adapted = counts.get(f"{root}.layers.{stages - 1}", 0.0) + sum(
        counts.get(f"{root}.layers.{stages - 2}.blocks.{j}", 0.0) for j in range(depth - ADAPT_LAST_K, depth))
    trunk = counts["Global"] - adapted
    return dict(trunk=trunk, adapted=adapted, floor=trunk + num_tasks * adapted)


def decoder_head_flops(counts: dict[str, float]) -> float:
    """FLOPs of a VTAGML's decoders and heads (``...decoders.<task>``, ``...heads.<task>``) in
    :func:`flop_counts` output."""
    return sum(v for k, v in counts.items() if k.split(".")[-2:-1] in (["decoders"], ["heads"]))


# ---------------------------------------------------------------------- time and memory
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                   device: torch.device) -> dict[str, float]:
    """Median wall time of each ``fn``, run round-robin (drifting load hits every variant alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def live_bytes(v: Variant, batch: dict) -> int:
    """Bytes of the variant's weights, buffers, optimizer state and the batch (distinct storages)."""
    tensors = [*v.model.parameters(), *v.model.buffers(), *batch.values()]
    tensors += [t for s in v.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def peak_step_bytes(v: Variant, batch: dict, device: torch.device) -> int:
    """Peak memory of one training step (after warm-up): live tensors + the step's peak allocation."""
    live = live_bytes(v, batch)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        v.step(batch)
        _sync(device)
        return live + torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        v.step(batch)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return live + max(itertools.accumulate((n for _, n in events), initial=0))


# ---------------------------------------------------------------------- the table
def measure(case: Case, device: torch.device, precision: str, repeats: int, warmup: int,
            checkpoint: Path, batch_size: int | None = None, train: bool = True) -> list[dict]:
    """One row per variant: images/s, FLOPs and (with ``train``) training images/s and peak memory."""
    b = batch_size or case.batch[device.type]
    batch = make_batch(b, case.size, device)
    images = batch["image"]
    variants = build_variants(case, checkpoint, device, train)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    floor = backbone_floor(variants["bare"].model, images)
    rows = {name: dict(variant=name) for name in variants}
    for name, v in variants.items():
        v.model.eval()  # until the training steps
        counts = flop_counts(lambda: v.forward(images), b)
        rows[name].update(flops=counts["Global"], dec_flops=decoder_head_flops(counts),
                          floor=floor["trunk"] + floor["adapted"] if name == "bare" else floor["floor"])

    def inference(v: Variant) -> Callable[[], object]:
        def run():
            with torch.inference_mode(), autocast:
                v.forward(images)
        return run

    def training(v: Variant) -> Callable[[], object]:
        def run():
            with autocast:
                v.step(batch)
        return run

    for name, s in median_seconds({n: inference(v) for n, v in variants.items()}, repeats, warmup, device).items():
        rows[name]["infer"] = b / s
    trained = {n: v for n, v in variants.items() if train and v.step is not None}
    steps = {n: training(v) for n, v in trained.items()}
    for _ in range(max(1, warmup)):  # optimizer state exists before memory is measured
        for fn in steps.values():
            fn()
    for name, v in trained.items():
        with autocast:
            rows[name]["memory"] = peak_step_bytes(v, batch, device)
    for name, s in median_seconds(steps, repeats, 0, device).items():
        rows[name]["train"] = b / s
    return [dict(row, case=case.name, precision=precision, batch=b, floor_parts=floor) for row in rows.values()]


def _g(flops: float) -> str:
    return f"{flops / 1e9:.3g}"


def _ratio(x: float | None, ref: float | None) -> str:
    return f"{x / ref:.2f}x" if x and ref else "-"


def format_table(rows: list[dict]) -> str:
    """Markdown table; ratios against the official structure and the bare encoder of the same case."""
    head = ["case", "prec", "variant", "infer img/s", "vs official", "vs bare", "GFLOP/img", "dec+heads",
            "backbone (floor)", "FLOP/s vs bare", "train img/s", "vs official", "peak MiB", "vs official"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (case, prec), group in itertools.groupby(rows, key=lambda r: (r["case"], r["precision"])):
        group = list(group)
        ref, bare = group[0], group[-1]  # official first, bare last
        for r in group:
            flops_per_s = r["flops"] * r["infer"] / (bare["flops"] * bare["infer"])
            train, mem = r.get("train"), r.get("memory")
            lines.append("| " + " | ".join([
                f"{case}, batch {r['batch']}", prec, r["variant"], f"{r['infer']:.1f}",
                _ratio(r["infer"], ref["infer"]),
                _ratio(r["infer"], bare["infer"]), _g(r["flops"]), _g(r["dec_flops"]),
                f"{_g(r['flops'] - r['dec_flops'])} ({_g(r['floor'])})", f"{flops_per_s:.2f}x",
                f"{train:.1f}" if train else "-", _ratio(train, ref.get("train")),
                f"{mem / 2**20:.0f}" if mem else "-", _ratio(mem, ref.get("memory"))]) + " |")
    return "\n".join(lines)


def format_floors(rows: list[dict]) -> str:
    """One line per case: trunk, adapted blocks and the floor of T tasks, GFLOP per image."""
    seen = {r["case"]: r["floor_parts"] for r in rows}
    return "\n".join(f"{case}: trunk {_g(f['trunk'])} + {len(TASKS)} x adapted blocks {_g(f['adapted'])} "
                     f"= floor {_g(f['floor'])} GFLOP/img (one backbone pass {_g(f['trunk'] + f['adapted'])}; "
                     f"adapted {f['adapted'] / (f['trunk'] + f['adapted']):.0%} of it)" for case, f in seen.items())


# ---------------------------------------------------------------------- host syncs
def troa_step(module: MultitaskModule, batch: dict, autocast) -> None:
    """What the trainer runs of a step before the optimizer: forward and loss (``supervised_step``,
    under ``autocast``), backward, TROA's update (``on_after_backward``); the gradients are freed."""
    with autocast:
        total = module.supervised_step(batch, 1)[0]
    total.backward()
    module.on_after_backward()
    module.zero_grad(set_to_none=True)


def check_syncs(case: Case, device: torch.device, precision: str, checkpoint: Path) -> str:
    """Forward, loss, backward and TROA's update of a training step (:func:`troa_step`) under
    ``set_sync_debug_mode``: "error" for the verdict, then "warn" to list every synchronizing line.
    (The trainer's non-finite loss check before the optimizer step reads one flag by design.)"""
    module = MultitaskModule(build_net(case, checkpoint), troa=True).to(device)
    batch = make_batch(case.batch["cuda"], case.size, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    module.train()
    troa_step(module, batch, autocast)  # warm-up (lazy initializations may sync once)
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        troa_step(module, batch, autocast)
        verdict = "no host-device sync"
    except RuntimeError as err:
        verdict = f"SYNC: {str(err).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    module.zero_grad(set_to_none=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            troa_step(module, batch, autocast)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    sites = sorted({f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})
    return f"{case.name} {precision}: {verdict}" + "".join(f"\n    {s}" for s in sites)


def backbone_checkpoint(case: Case, folder: str) -> Path:
    """The case's weights: shipped ones, or the backbone randomly initialized (seed 0) and saved in
    ``folder``, so that every variant loads the same."""
    if case.checkpoint is not None:
        return case.checkpoint
    torch.manual_seed(0)
    net = create_backbone(case.backbone, case.size, **case.backbone_kwargs)
    path = Path(folder) / f"{case.backbone}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--cases",
                        help=f"comma-separated of {sorted(CASES)} (default: demo,swin_t on CPU; all on CUDA)")
    parser.add_argument("--precision", help="fp32,bf16 (bf16: autocast; default fp32 on CPU, both on CUDA)")
    parser.add_argument("--repeats", type=int, help="default 3 on CPU, 5 on CUDA")
    parser.add_argument("--warmup", type=int, help="default 1 on CPU, 3 on CUDA")
    parser.add_argument("--batch", type=int, help="images per batch (default: the case's for the device)")
    parser.add_argument("--inference-only", action="store_true", help="no training steps (nor fpn_cached)")
    parser.add_argument("--check-syncs", action="store_true",
                        help="only check forward, loss, backward and TROA's update for host syncs (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cases = [CASES[c] for c in (args.cases or ("demo,swin_t,swinv2_t,swin_b" if cuda else "demo,swin_t")).split(",")]
    precisions = (args.precision or ("fp32,bf16" if cuda else "fp32")).split(",")
    repeats = args.repeats or (5 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.check_syncs and not cuda:
        print("--check-syncs skipped: torch.cuda.set_sync_debug_mode watches CUDA syncs only (run with a GPU)")
        return
    print(f"device: {describe_device(device)}; torch {torch.__version__}; median of {repeats} round-robin repeats, "
          f"{warmup} warm-up")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            checkpoint = backbone_checkpoint(case, tmp)
            for precision in precisions:
                if args.check_syncs:
                    print(check_syncs(case, device, precision, checkpoint), flush=True)
                else:
                    rows += measure(case, device, precision, repeats, warmup, checkpoint, args.batch,
                                    train=not args.inference_only)
                    print(f"measured {case.name} {precision}", flush=True)
    if rows:
        print(format_table(rows))
        print("\nFLOP floor per backbone (4 tasks):\n" + format_floors(rows))


if __name__ == "__main__":
    main()
