"""PSF grids: dataset layout, NetCDF round trip, torch vs poppy backends, field trends."""

import re

import numpy as np
import pytest
import torch
import xarray as xr

from optisim.field import field_grid, field_scale
from optisim.grid import FORMAT_NAME, FORMAT_VERSION, open_psf_grid, psf_grid, write_psf_grid
from optisim.lens import Lens, load_preset
from optisim.psf import compute_psfs, strehl_ratio
from optisim.pupil import SamplingError


@pytest.fixture(scope="module")
def default_lens():
    return load_preset("default")


@pytest.fixture(scope="module")
def grid_ds(default_lens):
    return psf_grid(default_lens, grid=(3, 3), size=33)


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def test_layout_dims_and_variables(grid_ds):
    ds = grid_ds
    assert dict(ds.sizes) == {"field_y": 3, "field_x": 3, "y": 33, "x": 33, "mode": 1}
    assert ds.psf.dims == ("field_y", "field_x", "y", "x")
    assert ds.zernike.dims == ("field_y", "field_x", "mode")
    for name in ("wavefront_rms", "strehl", "energy_in_window"):
        assert ds[name].dims == ("field_y", "field_x")
    assert ds.psf.dtype == np.float32
    assert ds.zernike.dtype == np.float64
    assert ds.wavefront_rms.dtype == np.float64
    assert ds.strehl.dtype == np.float64
    np.testing.assert_allclose(ds.psf.sum(dim=("y", "x")).values, 1.0, rtol=1e-5)
    assert ds.zernike.attrs["units"] == "waves RMS"
    assert ds.zernike.attrs["convention"] == "noll"
    assert ds.zernike.attrs["reference_wavelength_um"] == 0.525


def test_energy_in_window_dtype_as_documented(grid_ds):
    assert grid_ds.energy_in_window.dtype == np.float64


def test_layout_coordinates(grid_ds, default_lens):
    ds = grid_ds
    hy, hx = field_grid(default_lens.sensor_shape, (3, 3))
    np.testing.assert_allclose(ds.field_y.values, hy)
    np.testing.assert_allclose(ds.field_x.values, hx)
    np.testing.assert_allclose(ds.field_x.values, [-(1 - 1 / 512), 0, 1 - 1 / 512])
    scale_um = field_scale(default_lens.sensor_shape) * 0.25
    np.testing.assert_allclose(ds.field_y_um.values, hy * scale_um)
    np.testing.assert_allclose(ds.field_x_um.values, hx * scale_um)
    assert ds.field_y_um.dims == ("field_y",)
    np.testing.assert_allclose(ds.field_row.values, [0, 255.5, 511], atol=1e-9)
    np.testing.assert_allclose(ds.field_col.values, [0, 255.5, 511], atol=1e-9)
    np.testing.assert_allclose(ds.x.values, (np.arange(33) - 16) * 0.25)
    np.testing.assert_allclose(ds.y.values, (np.arange(33) - 16) * 0.25)
    assert ds.x.values[33 // 2] == 0.0
    assert ds.x.attrs["units"] == "um"
    assert list(ds["mode"].values) == [4]
    assert list(ds.mode_n.values) == [2]
    assert list(ds.mode_m.values) == [0]
    assert list(ds.mode_name.values) == ["defocus"]


def test_layout_attributes(grid_ds, default_lens):
    attrs = grid_ds.attrs
    assert attrs["format"] == FORMAT_NAME == "optisim-psf-grid"
    assert attrs["format_version"] == FORMAT_VERSION == 1
    assert attrs["backend"] == "torch"
    assert attrs["lens_name"] == "default"
    assert attrs["pixel_size_um"] == 0.25
    assert attrs["oversample"] == 1
    assert list(attrs["sensor_shape"]) == [512, 512]
    assert attrs["zernike_convention"] == "noll"
    assert attrs["reference_wavelength_um"] == 0.525
    assert list(attrs["wavelengths_um"]) == [0.525]
    assert list(attrs["wavelength_weights"]) == [1.0]
    assert "size // 2" in attrs["psf_centre"]
    assert "(y, x)" in attrs["axis_order"]
    assert Lens.from_toml(attrs["lens_toml"]) == default_lens


def test_grid_values_match_compute_psfs_and_orientation():
    # an asymmetric lens on a non-square grid: catches a transposed or mirrored field layout
    lens = load_preset("oil-100x-1.4").replace(pupil_samples=64)
    ds = psf_grid(lens, grid=(2, 3), size=17)
    assert ds.psf.shape == (2, 3, 17, 17)
    modes = lens.aberrations.modes()
    assert [(int(n), int(m)) for n, m in zip(ds.mode_n.values, ds.mode_m.values, strict=True)] == modes
    for iy in range(2):
        for ix in range(3):
            fy, fx = float(ds.field_y[iy]), float(ds.field_x[ix])
            expected, energy = compute_psfs(lens, fx, fy, size=17)
            np.testing.assert_allclose(ds.psf.values[iy, ix], expected[0], rtol=0, atol=1e-7)
            np.testing.assert_allclose(ds.energy_in_window.values[iy, ix], energy[0], rtol=1e-6)
            np.testing.assert_allclose(ds.zernike.values[iy, ix], lens.zernike_waves(fx, fy, modes), rtol=1e-12)
            assert ds.strehl.values[iy, ix] == pytest.approx(float(strehl_ratio(lens, fx, fy)), rel=1e-12)
    # field points differ: not all PSFs are the same
    assert rel_l2(ds.psf.values[0, 0], ds.psf.values[1, 2]) > 1e-2


def test_rectangular_sensor_grid():
    lens = load_preset("relay-2x-0.1").replace(pupil_samples=64)
    ds = psf_grid(lens, grid=(2, 2), size=17)
    np.testing.assert_allclose(ds.field_x.values, [-(1 - 1 / 1024), 1 - 1 / 1024])
    np.testing.assert_allclose(ds.field_y.values, [-0.75 * (1 - 1 / 768), 0.75 * (1 - 1 / 768)])
    np.testing.assert_allclose(ds.field_row.values, [0, 767], atol=1e-9)
    np.testing.assert_allclose(ds.field_col.values, [0, 1023], atol=1e-9)
    assert list(ds.attrs["sensor_shape"]) == [768, 1024]
    assert list(ds.attrs["wavelengths_um"]) == [0.78, 0.8, 0.82]
    np.testing.assert_allclose(ds.attrs["wavelength_weights"], [0.25, 0.5, 0.25])


def test_write_and_read_with_plain_xarray(grid_ds, default_lens, tmp_path):
    path = write_psf_grid(grid_ds, tmp_path / "grid.nc")
    assert path.exists()
    with xr.open_dataset(path) as back:
        np.testing.assert_array_equal(back.psf.values, grid_ds.psf.values)
        assert back.psf.dtype == np.float32
        for name in ("zernike", "wavefront_rms", "strehl", "energy_in_window"):
            np.testing.assert_array_equal(back[name].values, grid_ds[name].values)
        for name in ("field_y", "field_x", "field_y_um", "field_row", "y", "x", "mode", "mode_n", "mode_m"):
            np.testing.assert_array_equal(back[name].values, grid_ds[name].values)
        assert list(back.mode_name.values) == ["defocus"]
        assert set(back.attrs) == set(grid_ds.attrs)
        for key, value in grid_ds.attrs.items():
            if isinstance(value, str):
                assert back.attrs[key] == value, key
            else:  # netCDF stores lists as arrays and one-element lists as scalars
                np.testing.assert_array_equal(np.ravel(back.attrs[key]), np.ravel(value), err_msg=key)
        assert back.zernike.attrs["convention"] == "noll"
        assert Lens.from_toml(back.attrs["lens_toml"]) == default_lens
    with open_psf_grid(path) as opened:
        np.testing.assert_array_equal(opened.psf.values, grid_ds.psf.values)


def test_open_psf_grid_errors(tmp_path):
    missing = tmp_path / "missing.nc"
    with pytest.raises(FileNotFoundError, match=re.escape(f"PSF grid file not found: {missing}")):
        open_psf_grid(missing)
    other = tmp_path / "other.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}, attrs={"format": "something-else"}).to_netcdf(other, engine="h5netcdf")
    with pytest.raises(ValueError, match=re.escape("not an optisim PSF grid (format attribute 'something-else')")):
        open_psf_grid(other)


@pytest.mark.parametrize("name", ["default", "oil-100x-1.4"])
def test_torch_and_poppy_backends_agree(name):
    lens = load_preset(name).replace(pupil_samples=64)
    calls = []
    torch_ds = psf_grid(lens, grid=(2, 2), size=17)
    poppy_ds = psf_grid(lens, grid=(2, 2), size=17, backend="poppy", progress=calls.append)
    assert poppy_ds.attrs["backend"] == "poppy"
    assert sum(calls) == 4
    for iy in range(2):
        for ix in range(2):
            assert rel_l2(torch_ds.psf.values[iy, ix], poppy_ds.psf.values[iy, ix]) <= 1e-3
    np.testing.assert_array_equal(torch_ds.strehl.values, poppy_ds.strehl.values)


def test_backend_and_sampling_errors(default_lens):
    with pytest.raises(ValueError, match=re.escape("backend: expected one of ('torch', 'poppy'), got 'zemax'")):
        psf_grid(default_lens, grid=(1, 1), size=9, backend="zemax")
    coarse = default_lens.replace(pixel_size_um=0.4)
    with pytest.raises(SamplingError, match="undersamples the PSF"):
        psf_grid(coarse, grid=(1, 1), size=9, backend="poppy")
    ds = psf_grid(coarse, grid=(1, 1), size=9, allow_undersampled=True)
    assert ds.attrs["pixel_size_um"] == 0.4


def test_default_preset_field_trends(grid_ds):
    strehl = grid_ds.strehl.values
    assert np.unravel_index(np.argmax(strehl), strehl.shape) == (1, 1)
    assert strehl[1, 1] == pytest.approx(1.0)
    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    for iy, ix in corners:
        assert 0.95 <= grid_ds.wavefront_rms.values[iy, ix] <= 1.05
        assert strehl[iy, ix] < 0.05
    assert grid_ds.wavefront_rms.values[1, 1] == pytest.approx(0.0, abs=1e-12)
    # edge midpoints: h² about 1, so half a wave
    assert grid_ds.wavefront_rms.values[0, 1] == pytest.approx(0.5, rel=0.01)
    # the centre PSF is the most compact: the highest peak and the most energy in the window
    peaks = grid_ds.psf.max(dim=("y", "x")).values
    assert np.unravel_index(np.argmax(peaks), peaks.shape) == (1, 1)
    energy = grid_ds.energy_in_window.values
    assert np.unravel_index(np.argmax(energy), energy.shape) == (1, 1)
    # the lens is rotationally symmetric: the four corners agree
    psf = grid_ds.psf.values
    for iy, ix in corners[1:]:
        np.testing.assert_allclose(psf[iy, ix], psf[0, 0], atol=1e-6)


def test_oversample_attribute_and_values(default_lens):
    lens = default_lens.replace(pupil_samples=64)
    ds = psf_grid(lens, grid=(1, 1), size=17, oversample=2, device=torch.device("cpu"))
    assert ds.attrs["oversample"] == 2
    expected, _ = compute_psfs(lens, 0.0, 0.0, size=17, oversample=2)
    np.testing.assert_allclose(ds.psf.values[0, 0], expected[0], atol=1e-7)
