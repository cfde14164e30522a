"""The main job end to end (slow: 5-8 minutes on 2 CPU cores, by CPU; run with ``pytest -m slow``). Its speed is
measured by the demo itself (``metrics.json``) and ``benchmarks/``, not asserted here."""

import json

import pytest

from vtagml.demo import TARGETS, main


@pytest.mark.slow
def test_demo_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    main(["--out", str(out)])
    for name in ("metrics.json", "affinity.csv", "affinity.png", "predictions.png", "vtagml-demo.ckpt",
                 "model/config.json", "model/adapters.safetensors"):
        assert (out / name).stat().st_size > 0, name
    from vtagml import VTAGML
    assert VTAGML.from_adapters(out / "model").task_names == ["semseg", "depth", "normals", "edges"]
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics["tasks"]) == {"semseg", "depth", "normals", "edges"}
    assert set(metrics["targets"]) == set(TARGETS)
    assert metrics["wall_time_s"] > 0 and metrics["machine"]
    assert 0 < metrics["parameters"]["trainable_fraction"] < 0.5
    # a trained model is far from chance on every task (measured: mIoU 0.42, delta1 0.57, 23 deg, ODS 0.80)
    assert metrics["tasks"]["semseg"]["miou"] > 0.3 and metrics["tasks"]["edges"]["odsf"] > 0.6
    assert metrics["tasks"]["depth"]["delta1"] > 0.45 and metrics["tasks"]["normals"]["mean_angle"] < 30
