"""Novel domain without fine-tuning: `vtagml test` of a saved model directory on another dataset
(task names and declared class maps carry across), and the `vtagml novel-domain` report."""

import json
import math

import pytest
import torch

from tests.real_data import write_nyud, write_taskonomy
from tests.test_persistence import TASKS, make
from vtagml import SavedModel
from vtagml.cli import PACKAGED_CONFIGS, run_cli
from vtagml.data.class_maps import NYUD_CLASSES, TASKONOMY_CLASSES

def constant_model(checkpoint, num_classes, semseg_class, depth_m, directory):
    """A saved model predicting one class and one depth everywhere (zero head weights, set biases)."""
    net = make(checkpoint, num_classes=num_classes)
    with torch.no_grad():
        for name in ("semseg", "depth"):
            net.heads[name].conv.weight.zero_()
        net.heads["semseg"].conv.bias.fill_(-5.0)
        net.heads["semseg"].conv.bias[semseg_class] = 5.0
        net.heads["depth"].conv.bias.fill_(math.log(depth_m))
    return net.save_adapters(directory)


def run_test(config, directory, root, *extra):
    cli = run_cli(["test", "--config", config, "--model.net.init_args.directory", str(directory),
                   "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
                   "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                   "--trainer.default_root_dir", str(directory.parent / "runs"), *extra])
    return cli.model.last_test_metrics


def test_nyudv2_model_tested_on_taskonomy(tmp_path, tiny_checkpoint):
    """The model's 40 NYUD classes merge into Taskonomy's 17 (sofa -> couch); its depth is tested on
    Taskonomy's depth_zbuffer (task_map)."""
    root = write_taskonomy(tmp_path / "taskonomy")
    model = constant_model(tiny_checkpoint, 40, NYUD_CLASSES.index("sofa"), 2.0, tmp_path / "nyud_model")
    m = run_test("nyudv2_to_taskonomy.yaml", model, root, "--data.init_args.test_split", "val",
                 "--data.init_args.eval_size", "null",
                 "--data.init_args.dataset_kwargs", json.dumps({"split_csv": str(root / "splits.csv")}))
    # beechwood: 48 pixels, 1 uncertain, 1 background, 46 couch; couch predicted everywhere
    assert m["semseg/pixel_acc"] == pytest.approx(46 / 47)
    assert m["semseg/miou"] == pytest.approx((46 / 47 + 0.0) / 2)  # couch, background (missed)
    assert m["depth_zbuffer/rmse"] == pytest.approx(0.5, rel=1e-5) and m["depth_zbuffer/absrel"] == pytest.approx(0.2, rel=1e-5)
    assert {k.split("/")[0] for k in m} == {"semseg", "depth_zbuffer", "normals"}  # beechwood has no edges


def test_taskonomy_model_tested_on_nyudv2(tmp_path, tiny_checkpoint):
    """NYUD-v2 labels are read in Taskonomy's classes (chair -> chair, wall -> background, otherprop ignored)."""
    root = write_nyud(tmp_path / "NYUD_MT")
    model = constant_model(tiny_checkpoint, 17, TASKONOMY_CLASSES.index("chair"), 2.5, tmp_path / "tx_model")
    m = run_test("taskonomy_to_nyudv2.yaml", model, root, "--data.init_args.eval_size", "null")
    # val image 0003: 48 pixels, 1 unlabeled, 1 otherprop (ignored), 1 wall (background), 45 chair
    assert m["semseg/pixel_acc"] == pytest.approx(45 / 46)
    assert m["semseg/miou"] == pytest.approx((45 / 46 + 0.0) / 2)
    assert m["depth/rmse"] == pytest.approx(0.0, abs=1e-5)
    assert {k.split("/")[0] for k in m} == set(TASKS)


def test_saved_model_errors_name_the_fix(tmp_path, tiny_checkpoint):
    model = constant_model(tiny_checkpoint, 40, 0, 2.0, tmp_path / "m")
    with pytest.raises(ValueError, match=r"40 semseg classes, the data has 17.*class_maps"):
        SavedModel(model, tasks=["semseg"], num_classes=17)
    with pytest.raises(ValueError, match=r"depth_zbuffer.*task_map"):
        SavedModel(model, tasks=["depth_zbuffer"])
    with pytest.raises(ValueError, match="no task 'reshading'"):
        SavedModel(model, task_map={"depth_zbuffer": "reshading"})
    with pytest.raises(ValueError, match="unknown class map 'nyud'"):
        SavedModel(model, class_maps={"semseg": "nyud"})
    with pytest.raises(ValueError, match="maps 40 classes.*predicts 17"):
        SavedModel(constant_model(tiny_checkpoint, 17, 0, 2.0, tmp_path / "t"), class_maps={"semseg": "nyudv2->taskonomy"})
    net = SavedModel(model, tasks=["semseg", "depth_zbuffer"], num_classes=17, task_map={"depth_zbuffer": "depth"},
                      class_maps={"semseg": "nyudv2->taskonomy"})
    assert net.task_names == ["semseg", "depth_zbuffer", "normals", "edges"]
    assert net(torch.rand(1, 3, 64, 64))["semseg"].shape == (1, 17, 64, 64)
    assert (PACKAGED_CONFIGS / "nyudv2_to_taskonomy.yaml").is_file()
