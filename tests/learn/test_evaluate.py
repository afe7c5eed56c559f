"""``learn.evaluate`` and ``optisim evaluate``: metrics of a checkpoint and the baselines, figures, bad data."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from shared_helpers import one_line_error
from shared_helpers import run_cli as run

from learn.baselines import BASELINES
from learn.checkpoint import save_checkpoint
from learn.evaluate import evaluate
from optisim.lens import Lens

SENSOR = (128, 128)


@pytest.fixture(scope="module")
def result(trained, tmp_path_factory):
    """Every baseline on 2 test samples, Wiener balances tuned on 2 val samples among 2 candidates."""
    out = tmp_path_factory.mktemp("eval-out")
    checkpoint, data = trained
    r = evaluate(checkpoint, data, output=out, max_samples=2, tune_samples=2, balances=(1e-3, 1e-2), progress=False)
    return r, out


def test_metrics_json_has_every_method(result):
    r, out = result
    with open(out / "metrics.json") as f:
        saved = json.load(f)
    assert saved["methods"].keys() == {"model", *BASELINES}
    assert saved["split"] == "test" and saved["samples"] == 2 and saved["grid"] == [4, 4]
    assert saved["model"] == "cg-unet(3) width 8" and saved["seconds"] > 0 and saved["warnings"] == []
    for name, m in saved["methods"].items():
        assert m["images"] == 2, name
        assert np.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1, name
        assert np.shape(m["region_psnr"]) == (4, 4) and np.shape(m["region_ssim"]) == (4, 4), name
        assert m["centre_psnr"] is not None and m["edge_psnr"] is not None, name
    assert saved["methods"] == json.loads(json.dumps(r["methods"]))


def test_baselines_beat_the_blurred_input_on_noise_free_data(result):
    methods = result[0]["methods"]
    for name in ("wiener", "wiener-lowrank", "rl", "rl-lowrank"):
        assert methods[name]["psnr"] > methods["blurred"]["psnr"] + 0.3, name


def test_balance_tuned_on_the_validation_split(result):
    settings = result[0]["settings"]
    for name in ("wiener", "wiener-lowrank"):
        assert settings[name]["balance"] in (1e-3, 1e-2) and settings[name]["tuned_on"] == 2
    assert settings["rl"] == {"iterations": 30} == settings["rl-lowrank"]


def test_figures_open(result):
    out = result[1]
    for name, min_width in (("examples.png", 600), ("regions.png", 900)):
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and image.width >= min_width, name


def test_cli_prints_a_table(trained, tmp_path):
    checkpoint, data = trained
    r = run(
        "evaluate",
        checkpoint,
        data,
        "-o",
        tmp_path,
        "--baselines",
        "wiener,rl",
        "--grid",
        "2x2",
        "--max-samples",
        2,
        "--device",
        "cpu",
        "--quiet",
    )
    lines = r.output.splitlines()
    assert lines[0].split() == ["method", "PSNR", "SSIM", "centre", "PSNR", "edge", "PSNR"]
    assert [line.split()[0] for line in lines[1:5]] == ["model", "input", "wiener", "rl"]
    assert "2 test samples" in r.output
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["grid"] == [2, 2] and saved["methods"].keys() == {"model", "blurred", "wiener", "rl"}
    assert (tmp_path / "examples.png").is_file() and (tmp_path / "regions.png").is_file()


def test_dataset_missing_an_array(trained, tmp_path):
    checkpoint, data = trained
    broken = tmp_path / "broken.h5"
    shutil.copy(data, broken)
    with h5py.File(broken, "r+") as f:
        del f["offset"]
    r = run("evaluate", checkpoint, broken, "-o", tmp_path / "out", "--baselines", "", "--quiet", ok=False)
    one_line_error(r, "broken.h5: the dataset lacks the arrays offset")


def test_dataset_of_another_sensor(trained, tmp_path):
    checkpoint, data = trained
    other = tmp_path / "other.h5"
    shutil.copy(data, other)
    with h5py.File(other, "r+") as f:
        lens = Lens.from_toml(str(f.attrs["lens_toml"]))
        f.attrs["lens_toml"] = lens.replace(sensor_shape=(256, 256)).to_toml()
    r = run("evaluate", checkpoint, other, "-o", tmp_path / "out", "--baselines", "", "--quiet", ok=False)
    one_line_error(r, "other.h5: the dataset's sensor (256, 256) differs from the sensor (128, 128) that best.pt")
    with pytest.raises(ValueError, match="the field coordinates would not match"):
        evaluate(checkpoint, other, baselines=(), progress=False)


def _copy_checkpoint(checkpoint, path, **changes):
    state = torch.load(checkpoint, weights_only=True)
    state.update(changes)
    return save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "format_version")})


def test_other_data_and_lens_warn(trained, tmp_path):
    checkpoint, data = trained
    state = torch.load(checkpoint, weights_only=True)
    record = {**state["data"], "fingerprint": "0" * 64}
    lens = Lens.from_toml(state["lens_toml"]).replace(name="other-lens")
    copy = _copy_checkpoint(checkpoint, tmp_path / "copy.pt", data=record, lens_toml=lens.to_toml())
    with pytest.warns(UserWarning) as caught:
        r = evaluate(copy, data, baselines=(), max_samples=1, progress=False)
    messages = [str(w.message) for w in caught]
    assert any(
        "not the dataset copy.pt was trained on" in m and "evaluating on other data is legitimate" in m
        for m in messages
    ), messages
    assert any("the dataset's lens 'default' differs from the lens 'other-lens' of copy.pt" in m for m in messages)
    assert len(r["warnings"]) == 2 and r["methods"].keys() == {"model", "blurred"}


def test_bad_arguments(trained):
    checkpoint, data = trained
    with pytest.raises(ValueError, match=r"baselines: expected names among blurred, wiener.*got 'wiener2'"):
        evaluate(checkpoint, data, baselines=["wiener2"], progress=False)
    with pytest.raises(ValueError, match="max_samples: expected None or a positive number of samples, got 0"):
        evaluate(checkpoint, data, max_samples=0, progress=False)
    with pytest.raises(ValueError, match="split: expected one of train, val, test, got 'dev'"):
        evaluate(checkpoint, data, split="dev", baselines=(), progress=False)
