"""A faithful inverse: the flux term of training and bead fine-tuning, and the point-source targets of RL."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import h5py
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


def _blob(size=48, centre=(20, 27), sigma=(3.0, 3.0), flux=50.0):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    g = torch.exp(-((yy - centre[0]) ** 2) / (2 * sigma[0] ** 2) - ((xx - centre[1]) ** 2) / (2 * sigma[1] ** 2))
    return (flux * g / g.sum())[None, None].float()


@pytest.mark.parametrize(
    ("flux", "excess", "offset", "tolerance"),
    [(50.0, 1.76, 0.0, 0.015), (50.0, 1.0, 0.0, 0.015), (50.0, 0.6, 0.0, 0.015), (3.5, 1.2, 0.008, 0.015),
     (3.5, 1.2, -0.008, 0.015)],
)  # fmt: skip
def test_keep_local_flux_makes_a_source_keep_its_light_and_shape(flux, excess, offset, tolerance):
    """An output that sharpens an elongated source and adds 76 % light (the fine-tuned network on the fibre's beads
    did), or loses 40 %, or carries a background offset around a faint source, holds the input's light after the
    layer, with the output's own FWHM and elongation."""
    from learn.models import keep_local_flux
    from learn.pointsources import measure_sources

    where = dict(size=200, centre=(100, 97))
    blurred = _blob(sigma=(4.0, 3.0), flux=flux, **where)
    sharp = _blob(sigma=(1.3, 1.0), flux=flux * excess, **where) + offset
    kept = keep_local_flux(sharp, blurred, 31)
    before = measure_sources(sharp[0, 0].numpy(), [[100, 97]], aperture=15.5, background=offset)
    after = measure_sources(kept[0, 0].numpy(), [[100, 97]], aperture=15.5, background=0.0)
    assert after["flux"][0] == pytest.approx(flux, rel=tolerance)
    assert after["fwhm"][0] == pytest.approx(before["fwhm"][0], rel=0.02)
    assert after["aspect"][0] == pytest.approx(before["aspect"][0], rel=0.02)
    assert torch.equal(keep_local_flux(sharp, blurred, 1), sharp)  # a 1 px box: nothing to keep


def test_keep_local_flux_restores_a_lost_source_without_amplifying_its_ringing():
    """An output that kept 15 % of a source's light inside a negative ring (a network that sharpens and loses
    light): the layer restores the light in the source's own shape and leaves the ring as it was, where scaling the
    whole output (the layer's previous version) multiplied the ring too."""
    from learn.models import keep_local_flux
    from learn.pointsources import measure_sources

    where = dict(size=200, centre=(100, 97))
    blurred = _blob(sigma=(4.0, 3.0), flux=50.0, **where)
    ring = (_blob(sigma=(6.0, 6.0), flux=1.0, **where) - _blob(sigma=(3.0, 3.0), flux=1.0, **where)).clamp(min=0)
    output = _blob(sigma=(1.3, 1.0), flux=7.5, **where) - 40 * ring
    kept = keep_local_flux(output, blurred, 31)
    before = measure_sources(output[0, 0].numpy(), [[100, 97]], aperture=15.5, background=0.0)
    after = measure_sources(kept[0, 0].numpy(), [[100, 97]], aperture=15.5, background=0.0)
    assert before["flux"][0] < 0  # the ring outweighs what is left of the source
    assert after["flux"][0] == pytest.approx(50.0, rel=0.02)  # 49.6 measured
    assert after["fwhm"][0] == pytest.approx(before["fwhm"][0], rel=0.05)
    assert float(kept.min()) >= float(output.min())  # the ring is not deepened


def test_keep_local_flux_reads_a_varying_offset_beside_sparse_sources():
    """Sparse faint point sources (the case of ``optisim bench faithful``): an output that adds 20 % light to each
    and sits on an offset sloping from -0.0055 to -0.0065 across the field (as a network trained without the layer
    put under such sources there), where a source's box mean is ~1e-3 at a 61 px window, keeps each source's light
    within 3 % after the layer (1.6 % measured); a mean over boxes four windows wide in place of the clipped median
    (the layer's first version) gave 0.98-1.59 here."""
    from learn.models import keep_local_flux
    from learn.pointsources import measure_sources, point_source_field

    sharp, positions = point_source_field((320, 320), spacing=68, margin=40, sigma=0.75)
    sharp = torch.from_numpy(sharp)[None, None]
    k = torch.arange(-30, 31, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * 5.0**2))
    g = g / g.sum()
    blurred = torch.nn.functional.conv2d(sharp, (g[:, None] * g[None, :])[None, None], padding=30)
    output = 1.2 * sharp - 0.0055 - 0.001 * torch.linspace(0, 1, 320)[None, None, :, None]
    kept = keep_local_flux(output, blurred, 61)[0, 0].numpy()
    truth = measure_sources(sharp[0, 0].numpy(), positions, aperture=32, annulus=(32, 36))["flux"]
    ratio = measure_sources(kept, positions, aperture=32, annulus=(32, 36))["flux"] / truth
    assert len(positions) == 16
    assert abs(ratio - 1).max() < 0.03, ratio


def test_keep_flux_models_apply_the_layer_when_used_not_in_training():
    """A CG U-Net with keep_flux: in eval mode its output is the layer on its own estimate, over the PSF window; in
    training the estimate itself is optimised (trained through the layer, networks learnt a free background offset
    that the layer removes on training crops and not on sparse images); configs written before the setting existed
    load with it off."""
    from learn.models import build_model, keep_local_flux

    torch.manual_seed(0)
    config = ModelConfig(name="cg-unet", depth=2, width=4, gate_hidden=8, gate_init="random",
                         sensor_shape=(160, 160), psf_size=25, residual=False, keep_flux=True)  # fmt: skip
    model = build_model(config)
    blurred = _blob(size=160, centre=(70, 77), sigma=(3.0, 3.0)) + 0.002
    with torch.no_grad():
        estimate = model.estimate(blurred)
        assert torch.equal(model.train()(blurred), estimate)
        assert torch.equal(model.eval()(blurred), keep_local_flux(estimate, blurred, 25))
        assert not torch.equal(model.eval()(blurred), estimate)
    d = config.to_dict()
    assert ModelConfig.from_dict(d).keep_flux is True
    d.pop("keep_flux")
    assert ModelConfig.from_dict(d).keep_flux is False
    with pytest.raises(ValueError, match="keep_flux: expected true or false, got 1"):
        ModelConfig(keep_flux=1)


def test_keep_flux_reaches_the_checkpoint_with_the_psf_window(train_files, tmp_path):
    """`train --keep-flux`: the checkpoint's model keeps flux over the data's PSF window, and loads as it trained."""
    from learn.checkpoint import load_model

    args = ["train", str(train_files.data), "-o", str(tmp_path / "kf"), "--model", "cg-unet", "--depth", "2",
            "--width", "4", "--gate-hidden", "8", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--keep-flux", "--quiet"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(tmp_path / "kf" / "best.pt")
    with h5py.File(train_files.data, "r") as f:
        window = f["lowrank/kernels"].shape[-1]
    assert ckpt["model_config"]["keep_flux"] is True and ckpt["model_config"]["psf_size"] == window
    model, _, _ = load_model(tmp_path / "kf" / "best.pt")
    assert model.config.keep_flux and model.config.psf_size == window


def test_bench_faithful_runs_and_the_flux_keeping_network_keeps_the_flux(tmp_path):
    """`optisim bench faithful` at a tiny size: every method is reported per band, and the network with the
    flux-keeping layer keeps each band's point-source flux within the target whatever it has (not) learnt."""
    args = ["bench", "faithful", "-o", str(tmp_path), "--lens", "astig-coma", "--sensor", "128", "--steps", "2",
            "--size", "64", "--flux-weight", "0", "--rl-iterations", "3"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "bench.json").read_text())["results"][0]["report"]
    assert set(report["methods"]) == {"blurred", "rl-lowrank", "network flux=0", "network flux=0 keep-flux"}
    for row in report["methods"]["network flux=0 keep-flux"]:
        if row["flux_ratio"] is not None:
            assert abs(row["flux_ratio"] - 1) <= FAITHFUL_TARGETS["flux"], row
    assert "network flux=0 keep-flux" in r.output
    assert "validation PSNR (32 simulated crops): blurred" in r.output
