"""A faithful inverse: the flux term of training and bead fine-tuning, and the point-source targets of RL."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from calibration.finetune import masked_flux_error, measured_flux
from learn.baselines import run_baseline
from learn.bench_faithful import FAITHFUL_TARGETS, astig_coma_lens
from learn.checkpoint import load_checkpoint
from learn.config import FLUX_WEIGHT, TrainConfig
from learn.models import ModelConfig
from learn.pointsources import point_source_report
from learn.train import train
from optisim.cli import main
from optisim.lowrank import EigenPSFs, kernel_size_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

MODEL = ModelConfig(name="cg-unet", depth=2, width=4, gate_hidden=8)


def test_flux_weight_validated_and_stored():
    config = TrainConfig(model=MODEL, data="x.h5")
    assert config.flux_weight == FLUX_WEIGHT
    d = config.to_dict()
    assert TrainConfig.from_dict({**d, "flux_weight": 0.5}).flux_weight == 0.5
    d.pop("flux_weight")  # a checkpoint written before the term existed
    assert TrainConfig.from_dict(d).flux_weight == FLUX_WEIGHT
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match=re.escape(f"flux_weight: expected a finite weight >= 0, got {bad!r}")):
            TrainConfig(model=MODEL, data="x.h5", flux_weight=bad)


def test_flux_term_trains_and_reaches_the_checkpoint(train_files, tmp_path):
    """The CLI passes --flux-weight to the run; with it the weights differ from a run without (same seed)."""
    plain = TrainConfig(model=MODEL, data=str(train_files.data), epochs=1, batch_size=8, device="cpu", flux_weight=0.0)
    train(plain, tmp_path / "plain", progress=False)
    args = ["train", str(train_files.data), "-o", str(tmp_path / "flux"), "--model", "cg-unet", "--depth", "2",
            "--width", "4", "--gate-hidden", "8", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--flux-weight", "2", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    a, b = (load_checkpoint(tmp_path / name / "best.pt") for name in ("plain", "flux"))
    assert a["train_config"]["flux_weight"] == 0.0 and b["train_config"]["flux_weight"] == 2.0
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    r = CliRunner().invoke(main, [*args[:4], str(tmp_path / "bad"), *args[5:-2], "-1"])
    assert r.exit_code == 2 and "--flux-weight" in r.output


def test_measured_flux_follows_the_data_not_the_model():
    """Data 10 % brighter than the fitted model in the window: the measured flux is 10 % above the fitted energy."""
    w, a, b = 9, 100.0, 5.0
    yy, xx = np.mgrid[:w, :w] - w // 2
    psf = np.exp(-(yy**2 + xx**2) / (2 * 3.0**2))
    psf /= psf.sum() / 0.9  # the model puts 90 % of the bead's energy inside the window
    image = np.full((30, 30), b)
    image[10 : 10 + w, 12 : 12 + w] += 1.1 * a * psf
    fits = SimpleNamespace(data=image[None, None, 10 : 10 + w, 12 : 12 + w].astype(np.float32),
                           model=(b + a * psf)[None, None], centres=np.array([[14, 16]]), amplitude=np.array([a]),
                           background=np.array([b]))  # fmt: skip
    plane = SimpleNamespace(image=image, background=np.full((30, 30), b))
    assert measured_flux(fits, plane) == pytest.approx([110.0], rel=1e-5)
    plane.background = np.full((30, 30), b + 0.1)  # the data's own background, not the fit's, is subtracted
    assert measured_flux(fits, plane) == pytest.approx([(110.0 * 0.9 - 0.1 * w * w) / 0.9], rel=1e-5)


def test_masked_flux_error():
    target = torch.zeros(1, 1, 16, 16)
    pred = target.clone()
    pred[..., 2, 2] = 9.0  # light where nothing is known...
    mask = torch.ones_like(target)
    assert float(masked_flux_error(pred, target, mask, 3)) > 0
    mask[..., :5, :5] = 0  # ...is not counted once masked
    assert float(masked_flux_error(pred, target, mask, 3)) == 0.0


def test_rl_with_the_true_model_meets_the_targets_at_the_edge():
    """Spatially varying RL with the lens's model keeps edge point sources round and their flux (astig + coma lens).

    The sources are blurred by a finer low-rank model (tolerance 1e-3) than the one RL inverts (1e-2), so the test
    is not an exact inverse crime; 192x192 sensor, 4 sources at h = 0.9 (the corners of the source grid).
    """
    lens = astig_coma_lens((192, 192))
    k = kernel_size_for(lens)
    fine = EigenPSFs.from_lens(lens, kernel_size=k, grid=(9, 9), tol=1e-3)
    model = EigenPSFs.from_lens(lens, kernel_size=k, grid=(9, 9), tol=1e-2)

    def rl(blurred):
        return run_baseline("rl-lowrank", torch.from_numpy(blurred)[None], model=model, offsets=[[0, 0]],
                            iterations=100)[0]  # fmt: skip

    report = point_source_report({"blurred": lambda b: b, "rl": rl}, fine)
    blurred, deblurred = report["methods"]["blurred"][-1], report["methods"]["rl"][-1]
    assert deblurred["sources"] >= 4 and deblurred["band"] == "h >= 0.85"
    assert blurred["aspect"] > 1.3  # the lens does elongate the edge sources
    assert deblurred["aspect"] <= FAITHFUL_TARGETS["aspect"]
    assert abs(deblurred["flux_ratio"] - 1) <= FAITHFUL_TARGETS["flux"]
    assert deblurred["fwhm"] < 0.5 * blurred["fwhm"]
