"""FLOP accounting of benchmarks/bench_speed.py on the demo-size Swin (no timing)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from vtagml.models.backbone import create_backbone

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_speed.py"
SPEC = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
bench = sys.modules["bench_speed"] = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def flops():
    """Per-image FLOPs of the official structure, vtagml fpn, one task's encoder, decoders + heads, the floor."""
    case = bench.CASES["demo"]
    images = torch.rand(1, 3, case.size, case.size)
    official = bench.official_variant(case, case.checkpoint).model.eval()
    fpn = bench.build_net(case, case.checkpoint, decoder="fpn").eval()
    net = official.net
    task = net.task_names[0]

    with torch.no_grad():
        feats = [f.permute(0, 3, 1, 2) for f in net.forward_features(images, task)]
    bare = create_backbone(case.backbone, case.size, checkpoint_path=case.checkpoint, **case.backbone_kwargs)
    count = lambda fn: bench.flop_counts(fn, 1)  # noqa: E731
    size = (case.size, case.size)
    return dict(official=count(lambda: official(images)), fpn=count(lambda: fpn(images)),
                encoder=count(lambda: net.forward_features(images, task))["Global"],
                decoders_heads=sum(count(lambda: net.heads[t](net.decoders[t](feats, images), size))["Global"]
                                   for t in net.task_names),  # every task's (heads differ in channels)
                floor=bench.backbone_floor(bare, images))


def test_official_is_tasks_times_encoder_and_decoder(flops):
    expected = len(bench.TASKS) * flops["encoder"] + flops["decoders_heads"]
    assert flops["official"]["Global"] == pytest.approx(expected, rel=1e-3)
    assert bench.decoder_head_flops(flops["official"]) == pytest.approx(flops["decoders_heads"], rel=1e-3)


def test_vtagml_above_floor_and_below_official(flops):
    floor = flops["floor"]
    assert floor["floor"] == pytest.approx(floor["trunk"] + len(bench.TASKS) * floor["adapted"])
    backbone = flops["fpn"]["Global"] - bench.decoder_head_flops(flops["fpn"])
    assert floor["floor"] <= backbone < flops["official"]["Global"] - bench.decoder_head_flops(flops["official"])


def test_inference_only_rows_have_no_training_figures():
    """``--inference-only`` (Swin-B 448 on a laptop): every variant but fpn_cached, inference and FLOPs only."""
    case = bench.CASES["demo"]
    rows = bench.measure(case, torch.device("cpu"), "fp32", repeats=1, warmup=0, checkpoint=case.checkpoint,
                         batch_size=2, train=False)
    assert [r["variant"] for r in rows] == ["official", "fpn", "swin_unet", "bare"]
    assert all(r["batch"] == 2 and r["infer"] > 0 and "train" not in r and "memory" not in r for r in rows)
    table = bench.format_table(rows)
    assert "| demo Swin 64, batch 2 | fp32 | fpn |" in table and table.count(" - |") == 4 * 4


def test_sync_check_step_runs_the_step_up_to_the_optimizer():
    """``--check-syncs`` watches :func:`troa_step`: forward, loss, backward and TROA's update, with
    the gradients freed after (run here on CPU; the sync check itself needs CUDA)."""
    case = bench.CASES["demo"]
    module = bench.MultitaskModule(bench.build_net(case, case.checkpoint), troa=True).train()
    before = module.net.troa.counts.clone()
    bench.troa_step(module, bench.make_batch(2, case.size, torch.device("cpu")), torch.autocast("cpu", enabled=False))
    assert (module.net.troa.counts > before).all()  # every pair of the 4 labelled tasks measured
    assert all(p.grad is None for p in module.parameters())
