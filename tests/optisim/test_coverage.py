"""Coverage maps (optisim.coverage): the confidence formula, the per-pixel map, and the two files that hold them."""

import re

import h5py
import numpy as np
import pytest
import xarray as xr

from optisim.coverage import (
    DISTANCE_SCALE,
    FORMAT_NAME,
    LOW_CONFIDENCE,
    SPREAD_SCALE,
    Coverage,
    confidence_from,
    read_coverage,
    write_coverage,
)
from optisim.field import field_grid, pixel_to_field
from optisim.lens import load_preset
from optisim.lowrank import EigenPSFs
from optisim.psfmodel import read_psf_model, write_psf_model

SENSOR = (48, 64)
GRID = (5, 7)


def make_coverage(symmetry="none", sensor=SENSOR, grid=GRID):
    """Spread and distance growing towards the top-left corner (low confidence there, high elsewhere)."""
    fy, fx = field_grid(sensor, grid)
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    corner = np.hypot(yy - fy[0], xx - fx[0])
    spread = 0.02 + 0.2 * np.clip(0.5 - corner, 0, None)
    distance = 0.5 * np.clip(0.6 - corner, 0, None)
    return Coverage(fy, fx, spread, distance, sensor, symmetry)


@pytest.fixture(scope="module")
def model():
    lens = load_preset("default").replace(sensor_shape=SENSOR)
    return lens, EigenPSFs.from_lens(lens, kernel_size=9, grid=(4, 4))


# --- confidence ---------------------------------------------------------------------------------------------------


def test_confidence_formula_and_monotony():
    assert confidence_from(0.0, 0.0) == 1.0
    assert confidence_from(SPREAD_SCALE, 0.0) == pytest.approx(np.exp(-1))
    assert confidence_from(0.0, DISTANCE_SCALE) == pytest.approx(np.exp(-0.5))
    values = np.linspace(0, 1, 50)
    assert (np.diff(confidence_from(values, 0.05)) < 0).all()
    assert (np.diff(confidence_from(0.05, values)) < 0).all()
    c = make_coverage().confidence
    assert c.shape == GRID and c.dtype == np.float64 and 0 < c.min() < LOW_CONFIDENCE < c.max() <= 1
    assert c[0, 0] == c.min()  # the corner with most spread and farthest from beads


def test_confidence_map_shape_offset_and_clamping():
    cov = make_coverage()
    full = cov.confidence_map()
    assert full.shape == SENSOR and full.dtype == np.float32
    # the outermost pixel centres are the grid's corners: the map takes the grid's values there
    assert full[0, 0] == pytest.approx(cov.confidence[0, 0], rel=1e-6)
    assert full[-1, -1] == pytest.approx(cov.confidence[-1, -1], rel=1e-6)
    crop = cov.confidence_map(offset=(10, 20), shape=(8, 12))
    np.testing.assert_array_equal(crop, full[10:18, 20:32])
    assert cov.confidence_map(offset=(40, 50)).shape == (8, 14)  # the rest of the sensor
    hx, hy = pixel_to_field(0, 0, SENSOR)
    assert (float(hy), float(hx)) == pytest.approx((cov.field_y[0], cov.field_x[0]))
    # past the sensor the values are held at the grid's edge
    outside = cov.confidence_map(offset=(-5, -7), shape=(6, 8))
    np.testing.assert_allclose(outside[:5, :7], full[0, 0], rtol=1e-6)


def test_confidence_map_is_bilinear_between_grid_points():
    sensor, grid = (9, 9), (3, 3)
    fy, fx = field_grid(sensor, grid)
    spread = np.array([[0.0, 0.1, 0.3], [0.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
    cov = Coverage(fy, fx, spread, np.zeros(grid), sensor)
    m = cov.confidence_map()
    c = cov.confidence
    assert m[0, 2] == pytest.approx(0.5 * (c[0, 0] + c[0, 1]), rel=1e-6)  # pixel 2 is halfway to the grid's pixel 4
    assert m[2, 2] == pytest.approx(c[:2, :2].mean(), rel=1e-6)


def test_bad_input_messages():
    fy, fx = field_grid(SENSOR, GRID)
    good = np.zeros(GRID)
    with pytest.raises(
        ValueError, match=re.escape("psf_spread: expected shape (Gy, Gx) = (5, 7) (the field grid), got (7, 5)")
    ):
        Coverage(fy, fx, good.T, good, SENSOR)
    with pytest.raises(ValueError, match=re.escape("bead_distance: expected finite values >= 0, got values in [-1")):
        Coverage(fy, fx, good, good - 1, SENSOR)
    with pytest.raises(ValueError, match="field_x: expected a 1-D increasing array"):
        Coverage(fy, fx[::-1], good, good, SENSOR)
    with pytest.raises(ValueError, match=re.escape("symmetry: expected one of ('none', 'rotational'), got 'ring'")):
        Coverage(fy, fx, good, good, SENSOR, "ring")
    with pytest.raises(ValueError, match=re.escape("sensor_shape: expected (ny, nx) pixels, got 64")):
        Coverage(fy, fx, good, good, 64)
    with pytest.raises(ValueError, match="spread_scale: expected a positive finite scale, got 0"):
        confidence_from(good, good, spread_scale=0)
    with pytest.raises(ValueError, match=re.escape("shape: expected a region of at least 1x1 pixels, got 0x4")):
        make_coverage().confidence_map(shape=(0, 4))


# --- files ----------------------------------------------------------------------------------------------------------


def assert_same(a: Coverage, b: Coverage):
    for name in ("field_y", "field_x", "psf_spread", "bead_distance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.sensor_shape == b.sensor_shape and a.symmetry == b.symmetry


def test_coverage_file_round_trip_and_standard_readers(tmp_path):
    cov = make_coverage("rotational")
    path = write_coverage(tmp_path / "coverage.nc", cov, description="test", provenance={"beads": 12})
    assert_same(read_coverage(path), cov)
    assert [p.name for p in tmp_path.iterdir()] == ["coverage.nc"]  # no temporary file left
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds.attrs["format"] == FORMAT_NAME and ds.attrs["format_version"] == 1
        assert ds["psf_spread"].dims == ("coverage_y", "coverage_x") and ds["coverage_x"].attrs["units"] == "1"
        assert ds.attrs["coverage_symmetry"] == "rotational" and list(ds.attrs["sensor_shape"]) == list(SENSOR)
        np.testing.assert_allclose(ds["confidence"].values, cov.confidence)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["bead_distance"][:], cov.bead_distance)
        np.testing.assert_array_equal(f["coverage_y"][:], cov.field_y)
        assert f.attrs["format"] == FORMAT_NAME


def test_psf_model_file_holds_coverage(tmp_path, model):
    lens, eigen = model
    cov = make_coverage()
    plain = write_psf_model(tmp_path / "plain.nc", eigen, lens)
    assert read_coverage(plain) is None
    path = write_psf_model(tmp_path / "psf_model.nc", eigen, lens, coverage=cov)
    assert_same(read_coverage(path), cov)
    _, back = read_psf_model(path)  # the model reads as before
    np.testing.assert_array_equal(back.coefficients, eigen.coefficients)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["psf_spread"][:], cov.psf_spread)
        assert f.attrs["format"] == "optisim-psf-model" and f.attrs["format_version"] == 1
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["confidence"].dims == ("coverage_y", "coverage_x") and ds.attrs["coverage_symmetry"] == "none"
    with pytest.raises(ValueError, match=re.escape("coverage: expected maps of the model's sensor (48, 64), got")):
        write_psf_model(tmp_path / "bad.nc", eigen, lens, coverage=make_coverage(sensor=(64, 64)))


def test_read_coverage_errors(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="coverage file not found"):
        read_coverage(tmp_path / "missing.nc")
    (tmp_path / "text.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match=re.escape("text.nc: not a readable NetCDF-4")):
        read_coverage(tmp_path / "text.nc")
    xr.Dataset(attrs={"format": "something"}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    with pytest.raises(
        ValueError, match=re.escape("other.nc: not an optisim coverage or PSF model file (format 'something')")
    ):
        read_coverage(tmp_path / "other.nc")
    path = write_coverage(tmp_path / "c.nc", make_coverage())
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    ds.drop_vars("bead_distance").to_netcdf(tmp_path / "partial.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=re.escape("partial.nc: the coverage lacks the variable(s) bead_distance")):
        read_coverage(tmp_path / "partial.nc")
    ds.assign_attrs(format_version=2).to_netcdf(tmp_path / "v2.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=re.escape("v2.nc: optisim-coverage version 2; this optisim reads version 1")):
        read_coverage(tmp_path / "v2.nc")
    swapped = ds.assign(psf_spread=ds["psf_spread"].transpose())
    swapped.to_netcdf(tmp_path / "swapped.nc", engine="h5netcdf")
    with pytest.raises(
        ValueError, match=re.escape("swapped.nc: psf_spread: expected dimensions (coverage_y, coverage_x)")
    ):
        read_coverage(tmp_path / "swapped.nc")
    lens, eigen = model
    half = write_psf_model(tmp_path / "half.nc", eigen, lens, coverage=make_coverage())
    with xr.open_dataset(half, engine="h5netcdf") as ds:
        ds.load().drop_vars("psf_spread").to_netcdf(tmp_path / "half2.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match=re.escape("half2.nc: the coverage lacks the variable(s) psf_spread")):
        read_coverage(tmp_path / "half2.nc")
