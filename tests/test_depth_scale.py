"""benchmarks/depth_scale.py: the depth-scale diagnosis of a saved model."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_SWIN
from vtagml import VTAGML
from vtagml.data.synthetic import SEMSEG_CLASSES, SyntheticScenes

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "depth_scale.py"
SPEC = importlib.util.spec_from_file_location("depth_scale", SCRIPT)
depth_scale = sys.modules["depth_scale"] = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(depth_scale)


def test_delta1_counts_valid_pixels_within_the_ratio():
    gt = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]])  # the last pixel is invalid
    assert depth_scale.delta1(gt * 1.2, gt) == 1.0
    assert depth_scale.delta1(gt / 1.3, gt) == 0.0
    pred = torch.tensor([[[[1.1, 3.0, 4.0, 9.0]]]])  # 1.1 and 4.0 within 1.25 of 1 and 4; 3 / 2 is not
    assert depth_scale.delta1(pred, gt) == pytest.approx(2 / 3)


def test_best_factor_maximizes_delta1_closest_to_one():
    gt = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]])
    assert 1.0 in depth_scale.FACTORS and depth_scale.best_factor(gt, gt) == 1.0
    # 1.3 x exp(-0.04) = 1.249 is within 1.25, 1.3 x exp(-0.03) = 1.262 is not
    assert depth_scale.best_factor(gt * 1.3, gt) == pytest.approx(float(np.exp(-0.04)), abs=1e-12)
    assert depth_scale.delta1(gt * 1.3, gt) == 0.0 and depth_scale.delta1(gt * 1.3 * np.exp(-0.04), gt) == 1.0


def _report(tiny_checkpoint, directory, monkeypatch, capsys, seed):
    torch.manual_seed(seed)
    model = VTAGML(TINY_SWIN["name"], tasks=("depth",), img_size=64, checkpoint_path=tiny_checkpoint,
                   backbone_kwargs=TINY_SWIN["kwargs"], adapt_last_k=2, embed_dim=8, decoder_channels=16)
    with torch.no_grad():  # a head that varies the prediction per pixel
        model.heads["depth"].conv.weight.normal_(0.0, 0.5)
    model.save_adapters(directory)
    monkeypatch.setattr(sys, "argv", ["depth_scale.py", str(directory), "--samples", "6"])
    depth_scale.main()
    rows = capsys.readouterr().out.strip().splitlines()
    return {r.rsplit(maxsplit=1)[0]: float(r.split()[-1]) for r in rows}


def test_report_of_a_saved_model(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Ten figures; the camera-height bound and the share of scenes showing the room's ceiling depend
    on the data only, not on the model; the best global factor is at least as good as none (1 is
    among those tried)."""
    a = _report(tiny_checkpoint, tmp_path / "a", monkeypatch, capsys, seed=0)
    b = _report(tiny_checkpoint, tmp_path / "b", monkeypatch, capsys, seed=1)
    assert len(a) == 10 and a.keys() == b.keys()
    shown = "share of the scenes that show the room's ceiling"
    assert a[shown] == b[shown] and 0.0 <= a[shown] <= 1.0
    for v in (a, b):
        assert v["delta1 at that factor"] >= v["delta1"]
        assert depth_scale.FACTORS[0] <= v["best global depth factor on these scenes"] <= depth_scale.FACTORS[-1]
    bound = [k for k in a if k.startswith("delta1 of the exact depth")]
    assert len(bound) == 1 and a[bound[0]] == b[bound[0]] and 0.0 < a[bound[0]] <= 1.0
    assert a["delta1"] != b["delta1"] and all(0.0 <= v[k] <= 1.0 for v in (a, b) for k in v if k.startswith("delta1"))


def test_ceiling_shown_needs_more_than_two_percent_of_the_pixels():
    ceiling = SEMSEG_CLASSES.index("ceiling")
    maps = torch.zeros(3, 10, 10, dtype=torch.long)
    maps[1, 0, :1] = ceiling  # 1 %: not shown
    maps[2, 0, :3] = ceiling  # 3 %
    assert depth_scale.ceiling_shown(maps).tolist() == [False, False, True]
    scenes = SyntheticScenes("val", 64, "a", 60, 0, ("semseg",))  # the renderer labels the ceiling, in some scenes
    share = float(depth_scale.ceiling_shown(torch.stack([scenes[i]["semseg"] for i in range(60)])).float().mean())
    assert 0.0 < share < 0.5


@pytest.mark.parametrize("shown", [True, False])
def test_scale_spread_by_ceiling_splits_the_scenes(shown, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Where every scene (or none) shows the ceiling, its group's spread is the whole split's; the other is NaN."""
    monkeypatch.setattr(depth_scale, "ceiling_shown", lambda semseg: torch.full((len(semseg),), shown))
    rows = _report(tiny_checkpoint, tmp_path / "m", monkeypatch, capsys, seed=0)
    whole = rows["std of the per-image log scale error"]
    with_it = rows["std of the per-image log scale error where the ceiling shows"]
    without = rows["std of the per-image log scale error where it does not"]
    assert rows["share of the scenes that show the room's ceiling"] == float(shown)
    assert (with_it, np.isnan(without)) == (whole, True) if shown else (without, np.isnan(with_it)) == (whole, True)


def test_ridge_probe_reads_a_linear_signal_and_nothing_else():
    torch.manual_seed(0)
    x_fit, x = torch.randn(400, 8, dtype=torch.float64), torch.randn(200, 8, dtype=torch.float64)
    w = torch.randn(8, dtype=torch.float64)
    assert depth_scale.ridge_residual_std(x_fit, x_fit @ w + 3.0, x, x @ w + 3.0, penalty=1e-6) < 1e-4
    noise_fit, noise = torch.randn(400, dtype=torch.float64), torch.randn(200, dtype=torch.float64)
    left = depth_scale.ridge_residual_std(x_fit, noise_fit, x, noise, penalty=1.0)
    assert float(noise.std()) <= left < 1.1 * float(noise.std())  # unrelated features explain nothing


def _stripes(freq: torch.Tensor, size: int = 16) -> torch.Tensor:
    """(N, 3, size, size) vertical sinusoidal stripes, ``freq`` cycles per image, random phase."""
    u = torch.arange(size) / size
    phase = torch.rand(len(freq), 1) * 6.283
    rows = 0.5 + 0.5 * torch.sin(6.283 * freq[:, None] * u[None] + phase)
    return rows[:, None, None, :].expand(-1, 3, size, -1).contiguous()


def test_cnn_probe_reads_what_the_images_show_and_nothing_else():
    """A texture's frequency (like the renderer's, per surface) is read; a number it does not show is not."""
    torch.manual_seed(0)
    f_fit, f = 1.0 + 3.0 * torch.rand(512), 1.0 + 3.0 * torch.rand(128)
    x_fit, x = _stripes(f_fit), _stripes(f)
    y_fit, y = f_fit.log(), f.log()
    spread = float((y - y_fit.mean()).std())
    assert depth_scale.cnn_residual_std(x_fit, y_fit, x, y, epochs=15) < 0.5 * spread
    noise_fit, noise = torch.randn(512) * 0.3, torch.randn(128) * 0.3
    left = depth_scale.cnn_residual_std(x_fit, noise_fit, x, noise, epochs=15)
    assert 0.95 * float(noise.std()) < left < 1.3 * float(noise.std())  # nothing to read: the spread stays
