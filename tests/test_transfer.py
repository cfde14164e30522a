"""The add-task and zero-shot commands end to end on a tiny saved model (synthetic data)."""

import json

import pytest
import torch

from tests.test_persistence import trained
from vtagml.transfer import add_task_main, parse_prior, zero_shot_main

SMALL = ["--train-samples", "8", "--val-samples", "4", "--batch-size", "4", "--epochs", "1"]


@pytest.fixture
def saved(tmp_path, tiny_checkpoint):
    return trained(tiny_checkpoint).save_adapters(tmp_path / "model")


def test_add_task_command(tmp_path, saved, tiny_checkpoint):
    out = tmp_path / "grown"
    add_task_main(["--model", str(saved), "--task", "depth_zbuffer", "--out", str(out), *SMALL])
    res = json.loads((out / "results.json").read_text())
    assert res["existing_outputs_bit_identical"] is True
    assert {"depth_zbuffer/rmse", "depth_zbuffer/delta1"} <= set(res["metrics"])
    assert 0 < res["trained_parameters"] < res["all_task_trainable_parameters"]
    assert json.loads((out / "model" / "config.json").read_text())["task_names"][-1] == "depth_zbuffer"
    assert "bit-identical | True" in (out / "results.md").read_text()


def test_zero_shot_command(tmp_path, saved, tiny_checkpoint):
    out = tmp_path / "zs"
    zero_shot_main(["--model", str(saved), "--task", "edges_occlusion", "--prior", "edges=1,depth=0.5",
                    "--out", str(out), *SMALL])
    res = json.loads((out / "results.json").read_text())
    rows = res["results"]
    assert set(rows) == {"composed (prior)", "most affine (edges)", "plain mean"}
    assert all("edges_occlusion/odsf" in r for r in rows.values())
    assert (out / "model" / "config.json").exists()
    # TROA measured by another model that has the task: its affinity column gives the weights
    other = trained(tiny_checkpoint, tasks=("semseg", "depth", "edges_occlusion", "edges"))
    other.troa.affinity[:, 2] = torch.tensor([-0.2, 0.1, 1.0, 0.7])
    other.save_adapters(tmp_path / "other")
    zero_shot_main(["--model", str(saved), "--task", "edges_occlusion", "--affinity-from", str(tmp_path / "other"),
                    "--out", str(tmp_path / "zs2"), *SMALL])
    res = json.loads((tmp_path / "zs2" / "results.json").read_text())
    assert res["weights"] == pytest.approx({"semseg": 0.0, "depth": 0.1, "edges": 0.7})
    assert "most affine (edges)" in res["results"] and "error" not in res["results"]["composed (" + str(tmp_path / "other") + ")"]


def test_parse_prior_errors():
    assert parse_prior("a=1,b=2") == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match="TASK=WEIGHT"):
        parse_prior("depth")
