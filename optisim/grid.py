"""PSF grids over the field of view as ``xarray.Dataset``, written as NetCDF-4 (HDF5) files.

Layout (documented in ``data/FORMATS.md``; the format is ``optisim-psf-grid`` version 1)
-----------------------------------------------------------------------------------
dimensions ``field_y`` (Gy), ``field_x`` (Gx), ``y``, ``x`` (PSF pixels), ``mode`` (J Zernike modes)

=================  ==================================  ========================================================
variable           dims                                meaning, unit
=================  ==================================  ========================================================
``psf``            (field_y, field_x, y, x) float32    intensity, sums to 1 over (y, x)
``zernike``        (field_y, field_x, mode) float64    RMS-normalised Zernike coefficients, waves RMS at the
                                                       reference wavelength (attrs give convention and unit)
``wavefront_rms``  (field_y, field_x) float64          RMS wavefront error without piston and tilt, waves
``strehl``         (field_y, field_x) float64          Strehl ratio at the reference wavelength (no tilt)
``energy_in_window`` (field_y, field_x) float64        fraction of the PSF's energy inside the window
=================  ==================================  ========================================================

coordinates: ``field_y``, ``field_x`` (normalised field, :mod:`optisim.field`), ``field_y_um``, ``field_x_um``
(object-space µm from the sensor centre), ``field_row``, ``field_col`` (fractional sensor pixel), ``y``, ``x``
(µm from the chief ray; pixel ``size // 2`` is 0), ``mode`` (index in the lens file's convention), ``mode_n``,
``mode_m``, ``mode_name``. Attributes hold the lens file text and every convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from optisim._version import __version__
from optisim.field import field_grid, field_scale, field_to_pixel
from optisim.lens import Lens, wavefront_rms
from optisim.psf import compute_psfs, strehl_ratio
from optisim.zernike import mode_name, nm_to_index

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "open_psf_grid", "psf_grid", "write_psf_grid"]

FORMAT_NAME = "optisim-psf-grid"
FORMAT_VERSION = 1
BACKENDS = ("torch", "poppy")


def psf_grid(
    lens: Lens,
    *,
    grid=(9, 9),
    size: int = 64,
    oversample: int = 1,
    backend: str = "torch",
    device=None,
    allow_undersampled: bool = False,
    progress=None,
) -> xr.Dataset:
    """Compute the PSF at a regular grid of field points spanning the sensor.

    Parameters
    ----------
    lens : Lens
    grid : (gy, gx) ints, field points along y and x (they span the outermost pixel centres)
    size : int, PSF window in pixels; oversample : int, sub-samples per pixel (pixel integration)
    backend : {'torch', 'poppy'}, the fast batched MFT or poppy's optical-system model (the reference)
    device : torch device for the torch backend
    allow_undersampled : bool, accept a pixel larger than the Nyquist limit
    progress : callable(int) or None, called with the number of PSFs finished

    Returns
    -------
    xarray.Dataset in the layout of the module docstring.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    hy, hx = field_grid(lens.sensor_shape, grid)
    hyy, hxx = np.meshgrid(hy, hx, indexing="ij")
    # the torch path runs the sampling checks (and raises) before any poppy work starts
    psf, energy = compute_psfs(
        lens,
        hxx.ravel(),
        hyy.ravel(),
        size=size,
        oversample=oversample,
        device=device,
        allow_undersampled=allow_undersampled,
        progress=None if backend == "poppy" else progress,
    )
    if backend == "poppy":
        from optisim.poppy_backend import poppy_psfs

        psf = poppy_psfs(lens, hxx.ravel(), hyy.ravel(), size=size, oversample=oversample, progress=progress)
    gy, gx = hyy.shape
    modes = lens.aberrations.modes()
    waves = lens.zernike_waves(hxx, hyy, modes)
    rows = field_to_pixel(0 * hy, hy, lens.sensor_shape)[0]
    cols = field_to_pixel(hx, 0 * hx, lens.sensor_shape)[1]
    scale_um = field_scale(lens.sensor_shape) * lens.pixel_um
    pix = (np.arange(size) - size // 2) * lens.pixel_um
    conv = lens.aberrations.convention
    ds = xr.Dataset(
        data_vars={
            "psf": (
                ("field_y", "field_x", "y", "x"),
                psf.reshape(gy, gx, size, size).astype(np.float32),
                {"long_name": "point spread function", "units": "1", "normalisation": "sums to 1 over (y, x)"},
            ),
            "zernike": (
                ("field_y", "field_x", "mode"),
                waves.reshape(gy, gx, len(modes)),
                {
                    "long_name": "Zernike coefficients",
                    "units": "waves RMS",
                    "convention": conv,
                    "normalisation": "RMS = 1 over the unit pupil",
                    "reference_wavelength_um": lens.reference_wavelength_um,
                },
            ),
            "wavefront_rms": (
                ("field_y", "field_x"),
                wavefront_rms(waves, modes).reshape(gy, gx),
                {"long_name": "RMS wavefront error without piston and tilt", "units": "waves"},
            ),
            "strehl": (
                ("field_y", "field_x"),
                strehl_ratio(lens, hxx, hyy),
                {"long_name": "Strehl ratio at the reference wavelength, tilt excluded", "units": "1"},
            ),
            "energy_in_window": (
                ("field_y", "field_x"),
                energy.reshape(gy, gx).astype(np.float64),
                {"long_name": "fraction of the PSF energy inside the window", "units": "1"},
            ),
        },
        coords={
            "field_y": ("field_y", hy, {"units": "1", "long_name": "normalised field y (half the longer side = 1)"}),
            "field_x": ("field_x", hx, {"units": "1", "long_name": "normalised field x (half the longer side = 1)"}),
            "field_y_um": ("field_y", hy * scale_um, {"units": "um", "long_name": "object-space y from sensor centre"}),
            "field_x_um": ("field_x", hx * scale_um, {"units": "um", "long_name": "object-space x from sensor centre"}),
            "field_row": ("field_y", rows, {"units": "pixel", "long_name": "sensor row of the field point"}),
            "field_col": ("field_x", cols, {"units": "pixel", "long_name": "sensor column of the field point"}),
            "y": ("y", pix, {"units": "um", "long_name": "object-space y from the chief ray"}),
            "x": ("x", pix, {"units": "um", "long_name": "object-space x from the chief ray"}),
            "mode": (
                "mode",
                np.array([nm_to_index(*nm, conv) for nm in modes], dtype=np.int64),
                {"long_name": f"Zernike mode index ({conv} convention)", "convention": conv},
            ),
            "mode_n": ("mode", np.array([n for n, _ in modes], dtype=np.int64)),
            "mode_m": ("mode", np.array([m for _, m in modes], dtype=np.int64)),
            "mode_name": ("mode", np.array([mode_name(*nm) for nm in modes], dtype=object)),
        },
        attrs={
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "optisim_version": __version__,
            "backend": backend,
            "lens_name": lens.name,
            "lens_toml": lens.to_toml(),
            "pixel_size_um": lens.pixel_um,
            "oversample": oversample,
            "psf_centre": "chief ray at pixel (size // 2, size // 2)",
            "axis_order": "images are (y, x) = (row, column)",
            "field_normalisation": "h = (pixel - (n - 1) / 2) / (max(ny, nx) / 2)",
            "sensor_shape": list(lens.sensor_shape),
            "zernike_convention": conv,
            "zernike_normalisation": "RMS = 1 over the unit pupil",
            "zernike_unit": "waves RMS at reference_wavelength_um",
            "reference_wavelength_um": lens.reference_wavelength_um,
            "wavelengths_um": list(lens.wavelengths_um),
            "wavelength_weights": list(lens.weights),
        },
    )
    return ds


def write_psf_grid(ds: xr.Dataset, path) -> Path:
    """Write a PSF grid as NetCDF-4 (HDF5, via h5netcdf), compressed per PSF."""
    path = Path(path)
    encoding = {"psf": {"zlib": True, "complevel": 4, "chunksizes": (1, 1, ds.sizes["y"], ds.sizes["x"])}}
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding, invalid_netcdf=False)
    return path


def open_psf_grid(path) -> xr.Dataset:
    """Open a PSF grid file and check its format attributes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"PSF grid file not found: {path}")
    ds = xr.open_dataset(path, engine="h5netcdf")
    if ds.attrs.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not an optisim PSF grid (format attribute {ds.attrs.get('format')!r})")
    return ds
