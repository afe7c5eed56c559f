"""``optisim calibrate`` end to end: a simulated bead image in, a calibrated lens, network and report out; and the
one-line errors and warnings for bad input (click's CliRunner, real files)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import xarray as xr
from click.testing import CliRunner

from optisim.aberrations import FieldModel
from optisim.beads import simulate_bead_image
from optisim.cli import main
from optisim.lens import load_lens, load_preset

PIXEL_UM = 0.25
OPTICS = ["--wavelength", "0.525", "--na", "0.5"]
TINY_NETWORK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--size", "32", "--width", "4"]
TINY_NETWORK += ["--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *texts):
    """Exit 1, no traceback, and the output ends with one ``Error:`` line that contains every text."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for text in texts:
        assert text in errors[0], result.output


def write_tiff(path, image, *, pixel_um=PIXEL_UM, **metadata):
    """An ImageJ TIFF with the pixel size in its resolution tags (``pixel_um=None``: a plain TIFF without one)."""
    if pixel_um is None:
        tifffile.imwrite(path, image)
    else:
        res = (1 / pixel_um, 1 / pixel_um)
        tifffile.imwrite(path, image, imagej=True, resolution=res, metadata={"unit": "um", **metadata})
    return path


@pytest.fixture(scope="module")
def truth_lens():
    return load_preset("default").replace(
        sensor_shape=(192, 192), aberrations=FieldModel(field_curvature=0.1, astigmatism=0.05, coma=0.04)
    )


@pytest.fixture(scope="module")
def beads(tmp_path_factory, truth_lens):
    """(path of a 192x192 uint16 ImageJ TIFF of 16 simulated beads with 0.25 µm pixels, the image, the truth)."""
    image, truth = simulate_bead_image(truth_lens, 16, rng=np.random.default_rng(0), photons=(3e4, 1e5))
    path = tmp_path_factory.mktemp("beads") / "beads.tif"
    write_tiff(path, image[0].astype(np.uint16))
    return path, image[0], truth


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, beads):
    """One successful ``--no-network`` calibration: (result, output folder)."""
    out = tmp_path_factory.mktemp("calibrated") / "cal"
    result = invoke("calibrate", beads[0], "-o", out, *OPTICS, "--no-network")
    assert result.exit_code == 0, result.output
    return result, out


# -- success ----------------------------------------------------------------------------------------------------------


def test_calibrate_writes_every_output(calibrated):
    result, out = calibrated
    assert "report:" in result.output and str(out / "report.html") in result.output
    assert "16 beads fitted" in result.output
    for name in ("lens.toml", "calibration.json", "beads.csv", "report.html"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "model.pt").exists()
    html = (out / "report.html").read_text(encoding="utf-8")
    for png in ("detections.png", "zernike_maps.png", "psf_montage.png", "residuals.png"):
        assert f'src="{png}"' in html, png
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_calibrated_lens_file(calibrated, truth_lens):
    lens = load_lens(calibrated[1] / "lens.toml")
    assert lens.sensor_shape == (192, 192)
    assert lens.pixel_um == pytest.approx(PIXEL_UM)  # from the TIFF's resolution tags
    assert lens.na == 0.5 and lens.reference_wavelength_um == 0.525 and lens.immersion_index == 1.0
    modes = truth_lens.aberrations.modes()
    hx, hy = np.array([0.0, 0.6, -0.6, 0.6, 0.0]), np.array([0.0, 0.6, 0.6, -0.3, -0.7])
    measured, true = lens.zernike_waves(hx, hy, modes), truth_lens.zernike_waves(hx, hy, modes)
    assert np.abs(measured[1:]).max() > 0.04  # non-zero aberrations off axis
    np.testing.assert_allclose(measured, true, atol=0.01)  # and they are the true ones, to 0.01 waves RMS


def test_calibration_json(calibrated):
    summary = json.loads((calibrated[1] / "calibration.json").read_text(encoding="utf-8"))
    assert summary["format"] == "optisim-calibration"
    assert summary["format_version"] == 1
    assert summary["fits"]["beads"] >= 10
    assert len(summary["fits"]["table"]) == summary["fits"]["beads"]
    assert summary["fits"]["correlation_median"] > 0.99
    zernike = summary["zernike"]
    assert (zernike["convention"], zernike["normalisation"], zernike["unit"]) == ("noll", "rms", "waves_rms")
    assert [m["noll"] for m in zernike["modes"]] == list(range(4, 16))
    assert summary["optics"]["pixel_um"] == pytest.approx(PIXEL_UM)
    assert summary["optics"]["z_step_um"] is None
    assert (summary["model"]["kind"], summary["model"]["file"]) == ("parametric", "lens.toml")
    assert summary["network"] == {}
    assert 0.8 < summary["bead_width"]["diffraction_ratio"] < 1.5


def test_beads_csv(calibrated, beads):
    _, _, truth = beads
    summary = json.loads((calibrated[1] / "calibration.json").read_text(encoding="utf-8"))
    with (calibrated[1] / "beads.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    candidates = int(summary["detection"][0]["summary"].split()[0])
    assert len(rows) == candidates >= 16
    assert {"detect_status", "detect_y", "detect_x", "row", "col", "correlation", "Z4_waves"} <= set(rows[0])
    kept = [r for r in rows if r["detect_status"] == "kept"]
    assert len(kept) == summary["fits"]["beads"]
    fitted = np.array([(float(r["row"]), float(r["col"])) for r in kept])
    for y, x in zip(truth["rows"], truth["cols"], strict=True):
        assert np.hypot(*(fitted - (y, x)).T).min() < 0.1  # every bead found where it is, to 0.1 px


def test_parametric_symmetry_validation_and_coverage(calibrated):
    out = calibrated[1]
    summary = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    v, field = summary["validation"], summary["model"]["field"]
    assert v["symmetry"]["choice"] == field["symmetry"] == "rotational", v["symmetry"]["reason"]  # a centred lens
    row, col = field["optical_centre"]["pixel_row_col"]
    assert abs(row - 95.5) < 6 and abs(col - 95.5) < 6, field["optical_centre"]
    bands = v["holdout"]["by_band"]
    assert sum(b["beads"] for b in bands.values()) == v["holdout"]["beads"]
    assert v["holdout"]["wavefront_difference_waves_rms"]["median"] < 0.02
    radial = v["radial_holdout"]
    for model in radial["models"].values():
        assert model["wavefront_difference_waves_rms"]["beads"] == radial["outer_beads"] >= 3
    with xr.open_dataset(out / "coverage.nc", engine="h5netcdf") as ds:
        assert ds.attrs["format"] == "optisim-coverage" and ds.attrs["coverage_symmetry"] == "rotational"
        assert float(ds["confidence"].max()) <= 1 and ds["psf_spread"].dims == ("coverage_y", "coverage_x")
    assert 0 <= summary["model"]["coverage"]["share_below"] <= 1
    check = v["deblurred_beads"]
    assert set(check["holdout"]["methods"]) == {"raw", "rl", "rl-tv", "rl own PSF"} and check["holdout"]["beads"] >= 1


def test_calibrated_lens_works_with_other_commands(calibrated, tmp_path):
    lens_file = calibrated[1] / "lens.toml"
    shown = invoke("lens", "show", lens_file)
    assert shown.exit_code == 0, shown.output
    assert "Strehl" in shown.output
    nc = tmp_path / "psfs.nc"
    psf = invoke("psf", lens_file, "--grid", "2x2", "--size", "17", "-o", nc)
    assert psf.exit_code == 0, psf.output
    with xr.open_dataset(nc) as ds:
        assert ds["psf"].shape == (2, 2, 17, 17)
        np.testing.assert_allclose(ds["psf"].sum(("y", "x")).values, 1.0, rtol=1e-5)


def test_refuses_to_overwrite(calibrated, beads):
    before = (calibrated[1] / "calibration.json").read_bytes()
    result = invoke("calibrate", beads[0], "-o", calibrated[1], *OPTICS, "--no-network")
    assert_one_line_error(result, "is not empty", "--overwrite")
    assert (calibrated[1] / "calibration.json").read_bytes() == before


def test_calibrate_with_network(beads, tmp_path):
    out = tmp_path / "net"
    result = invoke("calibrate", beads[0], "-o", out, *OPTICS, "--modes", "4", "--max-beads", "3", *TINY_NETWORK)
    assert result.exit_code == 0, result.output
    assert "bead FWHM" in result.output and "report:" in result.output
    from learn.checkpoint import load_model

    model, lens, _ = load_model(out / "model.pt", device="cpu")
    assert isinstance(model, torch.nn.Module)
    assert lens.sensor_shape == (192, 192) and lens.pixel_um == pytest.approx(PIXEL_UM)
    summary = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    width = summary["network"]["bead_width"]
    for key in ("median_before", "median_after"):
        assert isinstance(width[key], float) and 1.0 < width[key] < 6.0, key
    assert summary["network"]["checkpoint"] == "model.pt"
    assert summary["seconds"]["network_training"] < 60


# -- options ---------------------------------------------------------------------------------------------------------


def test_optics_from_a_design_lens_and_pixel_size_option(tmp_path):
    """``--lens`` supplies wavelength and NA, ``--pixel-size`` a file's missing pixel size: the run gets past the
    optics to the detection (a noise image, so it stops there)."""
    rng = np.random.default_rng(1)
    noise = write_tiff(tmp_path / "noise.tif", rng.poisson(100.0, (192, 192)).astype(np.uint16), pixel_um=None)
    result = invoke("calibrate", noise, "-o", tmp_path / "out", "--lens", "default", "--pixel-size", "0.25")
    assert "0.25 µm pixels, NA 0.5" in result.output
    assert_one_line_error(result, "no beads found")


def test_modes_below_four_is_a_usage_error(beads, tmp_path):
    result = invoke("calibrate", beads[0], "-o", tmp_path / "out", *OPTICS, "--modes", "2-5")
    assert result.exit_code == 2
    assert "Noll indices >= 4" in result.output
    assert not (tmp_path / "out").exists()


def test_help_lists_the_options():
    result = invoke("calibrate", "--help")
    assert result.exit_code == 0
    for option in ("--pixel-size", "--z-step", "--wavelength", "--na", "--bead-diameter", "--model", "--source"):
        assert option in result.output, option


# -- bad input: one-line errors ---------------------------------------------------------------------------------------


def test_no_beads(tmp_path):
    noise = np.random.default_rng(0).poisson(100.0, (192, 192)).astype(np.uint16)
    path = write_tiff(tmp_path / "noise.tif", noise)
    result = invoke("calibrate", path, "-o", tmp_path / "out", *OPTICS, "--no-network")
    assert_one_line_error(result, "noise.tif", "no beads found", "--threshold")


def test_every_bead_saturated(beads, tmp_path):
    _, image, _ = beads
    clipped = np.clip(image * 0.1, 0, 255).astype(np.uint8)  # every bead's peak is above 255 at this scale
    path = write_tiff(tmp_path / "saturated.tif", clipped)
    result = invoke("calibrate", path, "-o", tmp_path / "out", *OPTICS, "--no-network")
    assert_one_line_error(result, "saturated", "at 255")


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "beads.tif"
    path.write_text("these are not beads\n", encoding="utf-8")
    result = invoke("calibrate", path, "-o", tmp_path / "out", *OPTICS, "--no-network")
    assert_one_line_error(result, "beads.tif", "not a readable image")


def truncated_copy(beads, tmp_path) -> Path:
    data = beads[0].read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_tiff(beads, tmp_path):
    result = invoke("calibrate", truncated_copy(beads, tmp_path), "-o", tmp_path / "out", *OPTICS, "--no-network")
    assert_one_line_error(result, "truncated.tif")
    assert "not a readable image" in result.output or "truncated" in result.output


def test_truncated_tiff_stderr_is_one_line(beads, tmp_path):
    """Outside pytest (whose log capture hides tifffile's message from CliRunner) the terminal shows stderr."""
    path = truncated_copy(beads, tmp_path)
    cmd = [sys.executable, "-m", "optisim", "calibrate", str(path), "-o", str(tmp_path / "out"), *OPTICS]
    done = subprocess.run(
        [*cmd, "--no-network"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error: ") and "not a readable image" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_z_stack_without_z_step(beads, tmp_path):
    _, image, _ = beads
    stack = np.stack([image, image, image]).astype(np.uint16)
    path = write_tiff(tmp_path / "stack.tif", stack, axes="ZYX")
    result = invoke("calibrate", path, "-o", tmp_path / "out", *OPTICS, "--no-network")
    assert_one_line_error(result, "3 planes", "--z-step")


@pytest.mark.parametrize(
    ("options", "texts"),
    [
        (["--na", "0.5"], ["wavelength is unknown", "--wavelength"]),
        (["--wavelength", "0.525"], ["numerical aperture is unknown", "--na"]),
        ([*OPTICS[:2], "--na", "1.2"], ["NA 1.2 needs an immersion medium", "--immersion-index"]),
        ([*OPTICS[:2], "--na", "1.4", "--immersion-index", "1.33"], ["--na 1.4 must be smaller", "1.33"]),
        ([*OPTICS[:2], "--na", "-0.5"], ["--na: expected a positive number, got -0.5"]),
        (["--wavelength", "525", "--na", "0.5"], ["--wavelength: 525", "give µm"]),
    ],
    ids=["no-wavelength", "no-na", "na-needs-immersion", "na-above-index", "negative-na", "wavelength-in-nm"],
)
def test_missing_or_bad_optics(beads, tmp_path, options, texts):
    result = invoke("calibrate", beads[0], "-o", tmp_path / "out", *options, "--no-network")
    assert_one_line_error(result, *texts)


def test_missing_pixel_size(beads, tmp_path):
    _, image, _ = beads
    path = write_tiff(tmp_path / "plain.tif", image.astype(np.uint16), pixel_um=None)
    result = invoke("calibrate", path, "-o", tmp_path / "out", *OPTICS, "--no-network")
    assert_one_line_error(result, "plain.tif records none", "--pixel-size")


# -- warnings ---------------------------------------------------------------------------------------------------------


def test_pixel_size_too_small_for_diffraction_warns(beads, tmp_path):
    """At 0.05 µm pixels the beads (about 2.2 px wide at 0.25 µm) would be five times narrower than diffraction
    allows. Only the warning matters; the run may fail later (one bead, one mode keeps it short)."""
    args = [*OPTICS, "--pixel-size", "0.05", "--no-network", "--max-beads", "1", "--modes", "4"]
    result = invoke("calibrate", beads[0], "-o", tmp_path / "out", *args)
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    assert "--pixel-size 0.05 µm overrides the file's 0.25 µm" in result.output
    warning = [line for line in result.output.splitlines() if "likely wrong" in line]
    assert len(warning) == 1 and warning[0].startswith("Warning: the beads are ")
    assert "diffraction limit at NA 0.5" in warning[0]


def test_no_warning_for_the_right_pixel_size(calibrated):
    assert "Warning" not in calibrated[0].output
