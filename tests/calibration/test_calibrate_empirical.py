"""``optisim calibrate --field-model empirical`` end to end: the symmetry choice, validation by band and by radial
hold-out, and the coverage maps in calibration.json, coverage.nc and psf_model.nc (opened with xarray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import xarray as xr
from click.testing import CliRunner

from optisim.aberrations import FieldModel
from optisim.beads import simulate_bead_image
from optisim.cli import main
from optisim.coverage import LOW_CONFIDENCE, read_coverage
from optisim.lens import load_preset
from optisim.psfmodel import read_psf_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

OPTICS = ["--wavelength", "0.525", "--na", "0.5", "--pixel-size", "0.25"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A 256x256 image of 40 beads through a lens whose blur is symmetric about the sensor centre, calibrated with
    an empirical model: (CLI result, output folder)."""
    lens = load_preset("default").replace(
        sensor_shape=(256, 256), aberrations=FieldModel(field_curvature=0.15, astigmatism=0.12, coma=0.06)
    )
    image, _ = simulate_bead_image(lens, 40, rng=np.random.default_rng(3), photons=(5e4, 2e5))
    folder = tmp_path_factory.mktemp("empirical")
    tifffile.imwrite(folder / "beads.tif", image[0].astype(np.uint16))
    out = folder / "cal"
    args = ["calibrate", str(folder / "beads.tif"), "-o", str(out), *OPTICS, "--field-model", "empirical",
            "--no-network", "--bootstrap", "6", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result, out


def test_summary_says_which_symmetry_and_why(calibrated):
    summary = json.loads((calibrated[1] / "calibration.json").read_text(encoding="utf-8"))
    emp = summary["model"]["empirical"]
    assert emp["symmetry"] == "rotational", emp["reason"]
    assert set(emp["cross_validated_error"]) == {"none", "rotational"}
    row, col = emp["optical_centre"]["pixel_row_col"]
    assert abs(row - 127.5) < 4 and abs(col - 127.5) < 4, emp["optical_centre"]  # the lens is centred
    assert emp["rank"] >= emp["model_rank"] and 0 < emp["relative_error"] <= 0.05
    rank = summary["validation"]["rank"]
    assert rank["forward_rank"] == emp["rank"] and 0.01 <= rank["forward_tolerance"] <= 0.05


def test_validation_by_band_and_by_radial_holdout(calibrated):
    v = json.loads((calibrated[1] / "calibration.json").read_text(encoding="utf-8"))["validation"]
    bands = v["holdout"]["by_band"]
    assert sum(b["beads"] for b in bands.values()) == v["holdout"]["beads"] >= 5
    assert v["holdout"]["psf_correlation"]["median"] > 0.9
    radial = v["radial_holdout"]
    assert radial["outer_beads"] >= 3 and set(radial["models"]) == {"none", "rotational"}
    for model in radial["models"].values():
        assert model["psf_correlation"]["beads"] == radial["outer_beads"]
        assert model["by_band"]["h<0.35"]["beads"] == 0  # only the outer beads are predicted
    check = v["deblurred_beads"]
    assert check["methods"] == ["rl", "rl-tv"]
    assert set(check["holdout"]["methods"]) == {"raw", "rl", "rl-tv", "rl own PSF"}
    rl = check["holdout"]["methods"]["rl"]["by_band"]
    assert sum(r["sources"] for r in rl) == check["holdout"]["beads"] >= 3
    for row in rl:  # the true lens blurs these beads; RL with the calibrated model keeps their light
        assert row["flux_ratio"] is None or 0.8 < row["flux_ratio"] < 1.25, rl
    assert check["radial_holdout"]["outer_beads"] == radial["outer_beads"]


def test_coverage_files_open_with_xarray(calibrated):
    out = calibrated[1]
    summary = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    cov = summary["model"]["coverage"]
    assert cov["file"] == "coverage.nc" and cov["low_confidence"] == LOW_CONFIDENCE
    assert 0 <= cov["share_below"] <= 1 and cov["spread_scale"] >= 0.1 and cov["reference_spread"] > 0
    with xr.open_dataset(out / "coverage.nc", engine="h5netcdf") as ds:
        assert ds.attrs["format"] == "optisim-coverage" and ds.attrs["coverage_symmetry"] == "rotational"
        assert ds["confidence"].dims == ("coverage_y", "coverage_x") and ds["confidence"].shape == (17, 17)
        assert ds.attrs["coverage_spread_scale"] == pytest.approx(cov["spread_scale"])
    with xr.open_dataset(out / "psf_model.nc", engine="h5netcdf") as ds:
        assert "psf_spread" in ds and "confidence" in ds
    a, b = read_coverage(out / "coverage.nc"), read_coverage(out / "psf_model.nc")
    np.testing.assert_array_equal(a.confidence, b.confidence)
    assert a.confidence_map().shape == (256, 256)
    assert float((a.confidence_map() < LOW_CONFIDENCE).mean()) == pytest.approx(cov["share_below"], abs=1e-6)
    _, model = read_psf_model(out / "psf_model.nc")
    assert model.rank == summary["model"]["empirical"]["rank"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Deblurred beads: shape and light by field band" in html and "<td>rl-tv</td>" in html
    assert 'src="coverage.png"' in html and (out / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_symmetry_none_and_no_coverage(calibrated, tmp_path):
    src = calibrated[1].parent / "beads.tif"
    args = ["calibrate", str(src), "-o", str(tmp_path / "n"), *OPTICS, "--field-model", "empirical", "--no-network",
            "--symmetry", "none", "--bootstrap", "0", "--radial-holdout", "0", "--check-methods", "",
            "--quiet"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "n" / "calibration.json").read_text(encoding="utf-8"))
    assert summary["model"]["empirical"]["symmetry"] == "none" and "coverage" not in summary["model"]
    assert "radial_holdout" not in summary["validation"] and not (tmp_path / "n" / "coverage.nc").exists()
    assert "deblurred_beads" not in summary["validation"]
    bad = CliRunner().invoke(main, [*args[:-9], "--bootstrap", "1"])
    assert bad.exit_code == 2 and "--bootstrap" in bad.output
    bad = CliRunner().invoke(main, [*args[:-9], "--check-methods", "rl,wiener"])
    assert bad.exit_code == 2 and "--check-methods" in bad.output and "wiener" in bad.output
