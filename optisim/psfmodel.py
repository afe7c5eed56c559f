"""Empirical low-rank PSF models: eigen-PSFs fitted to measured PSFs, and the file that holds them.

Some instruments are poorly described by a few low-order Zernike terms (a multimode-fibre imager, a scattering
relay). For them the forward model is built from measured PSFs (sub-resolution beads) instead of a lens's field
model: N PSFs ``p_i`` at scattered field points ``h_i`` are factored by SVD, ``P = U S Vᵀ`` (P is N x kh·kw,
each row summing to 1); the K leading rows of ``Vᵀ`` are the eigen-PSFs ``e_k`` (unit L2 norm) and
``c_ik = p_i · e_k`` their coefficients at the beads. Each coefficient is spread over the field by a smoothing
thin-plate spline with a linear trend (``scipy.interpolate.RBFInterpolator``) and sampled on a regular field
grid spanning the sensor's outermost pixel centres. The result is an :class:`optisim.lowrank.EigenPSFs`, the
same low-rank model a lens gives (:meth:`EigenPSFs.from_lens`), so ``PSF(h) = sum_k w_k(h) e_k`` with the weight
maps ``w_k`` bicubic in the grid coefficients, and every consumer (the blur operator, :mod:`optisim.samples`,
:mod:`optisim.dataset`, ``optisim simulate``) takes it unchanged.

File format ``optisim-psf-model`` version 1 (NetCDF-4 / HDF5, documented in ``data/FORMATS.md``)
------------------------------------------------------------------------------------------------
=================  ==================================  ===================================================
variable           dims, dtype                         meaning, unit
=================  ==================================  ===================================================
``kernels``        (k, y, x) float32                   eigen-PSFs, unit L2 norm, chief ray at (kh//2, kw//2)
``coefficients``   (field_y, field_x, k) float64       coefficient of each eigen-PSF at each grid point
``singular_values`` (s,) float64                       all singular values of the measured PSF matrix
=================  ==================================  ===================================================

Coordinates ``field_y``, ``field_x`` (normalised field, :mod:`optisim.field`), ``k``, and ``y``, ``x`` (pixels
from the chief ray). Attributes: ``format``, ``format_version``, ``optisim_version``, ``sensor_shape``,
``pixel_size_um``, ``lens_toml`` (the nominal lens: sensor, pixel and optics; its aberrations are not used),
``lens_note``, ``rank``, ``relative_error``, ``description``, ``provenance`` (JSON) and ``conventions``.

Inside a forward-blurred dataset (:mod:`optisim.dataset`) any low-rank model, from a lens or from beads, is stored
as the HDF5 groups ``/lowrank`` and ``/psf_grid`` (:func:`write_model_groups`, :func:`read_model_groups`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from optisim._version import __version__
from optisim.coverage import Coverage, coverage_dataset
from optisim.field import field_grid
from optisim.lens import Lens
from optisim.lowrank import DEFAULT_TOL, EigenPSFs, rank_for_tolerance

if TYPE_CHECKING:
    import h5py
    import xarray as xr

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "eigen_psfs_from_samples",
    "gcv_smoothing",
    "model_digest",
    "psf_model_info",
    "read_model_groups",
    "read_psf_model",
    "write_model_groups",
    "write_psf_model",
]

FORMAT_NAME = "optisim-psf-model"
FORMAT_VERSION = 1
MIN_SAMPLES = 3  # a thin-plate spline with a linear trend needs three points off one line
CONVENTIONS = (
    "images and kernels are (y, x) = (row, column); kernels (k, y, x) are eigen-PSFs e_k with unit L2 norm and the "
    "chief ray at pixel (kh // 2, kw // 2); the PSF at field point h is PSF(h) = sum_k w_k(h) e_k (it sums to about "
    "1), where w_k is the bicubic interpolant of coefficients[:, :, k] over (field_y, field_x), held at the grid's "
    "edge beyond it; field coordinates h = (pixel - (n - 1) / 2) / (max(ny, nx) / 2) from the sensor centre"
)
LENS_NOTE = (
    "lens_toml is the nominal lens the PSFs were measured with: its sensor, pixel size, wavelengths and NA describe "
    "the instrument; its aberrations are NOT used when this file is the forward model (the eigen-PSFs are)"
)
_GCV_RANGE = np.logspace(-12, 1, 53)  # candidate smoothings, relative to the largest kernel-matrix eigenvalue


def _check_samples(psfs, hy, hx) -> tuple[np.ndarray, np.ndarray]:
    """Validate the measured PSFs and their field points; returns the PSFs normalised to sum 1 and (N, 2) points."""
    p = np.asarray(psfs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"psfs: expected shape (N, kh, kw), got {p.shape}")
    n, kh, kw = p.shape
    if n < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} bead PSFs for an empirical model, got {n}")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"psfs: expected square windows of odd size (chief ray at the centre pixel), got {kh}x{kw}")
    if not np.isfinite(p).all():
        raise ValueError("psfs: contains NaN or Inf values")
    sums = p.sum(axis=(1, 2))
    if (sums <= 0).any():
        i = int(np.argmax(sums <= 0))
        raise ValueError(
            f"psfs: every PSF must have a positive sum (it is normalised to 1); PSF {i} sums to {sums[i]:.4g}"
        )
    if np.shape(hy) != (n,) or np.shape(hx) != (n,):
        shapes = f"{np.shape(hy)} and {np.shape(hx)}"
        raise ValueError(f"hy, hx: expected one field point per PSF, shapes ({n},) and ({n},), got {shapes}")
    points = np.stack([np.asarray(hy, dtype=np.float64), np.asarray(hx, dtype=np.float64)], axis=-1)
    if not np.isfinite(points).all():
        raise ValueError("hy, hx: contain NaN or Inf values")
    if np.linalg.matrix_rank(np.c_[np.ones(n), points - points.mean(axis=0)], tol=1e-9) < 3:
        raise ValueError("hy, hx: the field points lie on one line; spread the beads over the field")
    return p / sums[:, None, None], points


def _tps_matrix(points: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return np.where(r > 0, r**2 * np.log(np.where(r > 0, r, 1.0)), 0.0)


def gcv_smoothing(hy, hx, values) -> float:
    """Smoothing of a thin-plate spline (linear trend) through ``values`` chosen by generalised cross-validation.

    The smoothing spline with parameter λ solves ``(A + λ I) a + Q b = v`` (A: the ``r² log r`` kernel matrix,
    Q: the linear polynomial), as ``scipy.interpolate.RBFInterpolator(..., smoothing=λ)`` does. With
    ``Z`` an orthonormal basis of the residual space (orthogonal to Q) and ``ZᵀAZ = U diag(μ) Uᵀ``, the residuals are
    ``λ Z U diag(1 / (μ + λ)) Uᵀ Zᵀ v`` and ``GCV(λ) = N |residuals|² / (sum_j λ / (μ_j + λ))²`` (Craven & Wahba,
    Numer. Math. 31, 1979). One λ serves every column of ``values`` (their squared residuals are summed), on a grid of
    candidates from 1e-12 to 10 times the largest μ. Exact, smooth data give a λ near zero (interpolation); noisy data
    a λ that balances the noise against the spline's bending. With few points (tens) GCV now and then undersmooths.

    Parameters
    ----------
    hy, hx : (N,) float arrays, normalised field points (:mod:`optisim.field`)
    values : (N,) or (N, K) float array, the values at those points

    Returns
    -------
    float, the smoothing λ (0 when N <= 3: the linear trend then fits exactly)
    """
    points = np.stack([np.asarray(hy, float), np.asarray(hx, float)], axis=-1)
    v = np.asarray(values, dtype=float).reshape(len(points), -1)
    n = len(points)
    if n <= MIN_SAMPLES:
        return 0.0
    q, _ = np.linalg.qr(np.c_[np.ones(n), points], mode="complete")
    z = q[:, MIN_SAMPLES:]
    mu, u = np.linalg.eigh(z.T @ _tps_matrix(points) @ z)
    mu = np.clip(mu, 0.0, None)  # positive in exact arithmetic (the kernel is conditionally positive definite)
    proj2 = ((u.T @ (z.T @ v)) ** 2).sum(axis=1)
    candidates = _GCV_RANGE * max(float(np.abs(mu).max()), 1e-300)
    shrink = candidates[:, None] / (mu[None, :] + candidates[:, None])  # (candidates, N - 3)
    score = n * (shrink**2 * proj2).sum(axis=1) / shrink.sum(axis=1) ** 2
    return float(candidates[int(np.argmin(score))])


def eigen_psfs_from_samples(
    psfs, hy, hx, sensor_shape, *, rank: int | None = None, tol: float = DEFAULT_TOL, grid=(9, 9), smoothing=None
) -> EigenPSFs:
    """An empirical low-rank PSF model from PSFs measured at scattered field points (beads).

    Parameters
    ----------
    psfs : (N, kh, kw) float array, N >= 3, measured PSFs on the sensor's pixel grid, axes (bead, y, x), each
        centred with its chief ray (the bead's position) at pixel ``(kh // 2, kw // 2)``; square odd windows. Each is
        normalised to sum 1 here (a PSF whose sum is <= 0 is an error). Background must already be subtracted.
    hy, hx : (N,) float arrays, normalised field coordinates of the beads (:func:`optisim.field.pixel_to_field`)
    sensor_shape : (ny, nx) pixels, the sensor the field coordinates refer to
    rank : int or None, the number K of eigen-PSFs; None: the smallest whose relative Frobenius error over the
        measured PSFs is at most ``tol`` (:func:`optisim.lowrank.rank_for_tolerance`). Noise spreads over every
        singular value, so noisy beads need a larger ``tol`` (about the noise's share of the PSF energy) or ``rank``.
    tol : float, see ``rank``
    grid : (Gy, Gx) ints, at least 4x4, the field grid of the weight maps (:func:`optisim.field.field_grid`)
    smoothing : float >= 0 or None, the smoothing λ of the thin-plate splines (``RBFInterpolator``'s ``smoothing``;
        0 interpolates the bead coefficients exactly). None: chosen from the data by generalised cross-validation
        (:func:`gcv_smoothing`, one λ for all K coefficients), near 0 for noise-free PSFs and larger for noisy ones.

    Returns
    -------
    EigenPSFs with ``kernels`` (K, kh, kw) float32, ``coefficients`` (Gy, Gx, K) float64 on the grid,
    ``singular_values`` (min(N, kh·kw),) of the normalised PSF matrix.

    Notes
    -----
    The weight maps are a thin-plate spline plus a linear trend in ``(hy, hx)``. Inside the beads' convex hull they
    interpolate; outside it (sensor corners the beads missed) they extrapolate along the linear trend plus the
    spline's tail, so put beads near the corners or expect larger errors there. Measured eigen-PSFs include
    everything the measurement does: the bead's own size, the pixel integration and any sub-pixel offset of the
    bead from the pixel centre. A model from measured beads therefore blurs with the bead-convolved PSF; use beads
    well below the resolution, or deconvolve them first.

    Why cross-validation rather than a fixed default such as ``smoothing = 1e-3 * N`` (a constant penalty per bead in
    the mean-squared-residual form): the best λ depends on the noise and on how fast the PSF changes between beads,
    not on N alone. On simulated beads (default preset, 40 and 200 beads, noise-free and with 3000 or 20000 photons
    per bead) ``1e-3 * N`` made noise-free, well-sampled fields 3 to 10 times worse than interpolation, while GCV
    came within a few per cent of the best of six fixed values in every case.
    """
    from scipy.interpolate import RBFInterpolator

    p, points = _check_samples(psfs, hy, hx)
    n, kh, kw = p.shape
    gy, gx = (int(g) for g in grid)
    if gy < 4 or gx < 4:
        raise ValueError(f"grid: bicubic weight maps need at least 4x4 field points, got {gy}x{gx}")
    if smoothing is not None and not (np.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing: expected a finite number >= 0 or None (cross-validated), got {smoothing!r}")
    matrix = p.reshape(n, kh * kw)
    _, s, vt = np.linalg.svd(matrix, full_matrices=False)
    if rank is None:
        rank = rank_for_tolerance(s, tol)
    elif isinstance(rank, bool) or not 1 <= int(rank) <= len(s):
        raise ValueError(f"rank: expected 1..{len(s)} (the rank of {n} PSFs), got {rank}")
    kernels = vt[: int(rank)]
    coefficients = matrix @ kernels.T  # least squares in the orthonormal eigen-PSF basis, c = P Vᵀ
    lam = gcv_smoothing(points[:, 0], points[:, 1], coefficients) if smoothing is None else float(smoothing)
    try:
        spline = RBFInterpolator(points, coefficients, kernel="thin_plate_spline", degree=1, smoothing=lam)
    except np.linalg.LinAlgError:
        raise ValueError(
            "hy, hx: the spline through the bead coefficients is singular (two beads at the same field point?); "
            "remove duplicates or pass smoothing > 0"
        ) from None
    field_y, field_x = field_grid(sensor_shape, (gy, gx))
    yy, xx = np.meshgrid(field_y, field_x, indexing="ij")
    on_grid = spline(np.stack([yy.ravel(), xx.ravel()], axis=-1)).reshape(gy, gx, int(rank))
    return EigenPSFs(
        kernels=kernels.reshape(int(rank), kh, kw).astype(np.float32),
        coefficients=on_grid,
        field_y=field_y,
        field_x=field_x,
        sensor_shape=tuple(int(v) for v in sensor_shape),
        singular_values=s,
    )


def model_digest(model: EigenPSFs) -> str:
    """SHA-256 of what the model blurs with: kernels, grid coefficients, field grid and sensor shape."""
    h = hashlib.sha256()
    for array, dtype in (
        (model.kernels, "<f4"),
        (model.coefficients, "<f8"),
        (model.field_y, "<f8"),
        (model.field_x, "<f8"),
        (model.sensor_shape, "<i8"),
    ):
        a = np.ascontiguousarray(array, dtype=dtype)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_model(model: EigenPSFs, where: str) -> None:
    k, gy, gx = model.kernels.shape[0], len(model.field_y), len(model.field_x)
    if model.kernels.ndim != 3 or model.coefficients.shape != (gy, gx, k):
        raise ValueError(
            f"{where}: expected kernels (K, kh, kw) and coefficients (Gy, Gx, K) = ({gy}, {gx}, K), got "
            f"{model.kernels.shape} and {model.coefficients.shape}"
        )
    kh, kw = model.kernels.shape[1:]
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"{where}: expected square eigen-PSFs of odd size, got {kh}x{kw}")
    if gy < 4 or gx < 4:
        raise ValueError(f"{where}: bicubic weight maps need at least 4x4 field points, got {gy}x{gx}")


def _jsonable(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def write_psf_model(
    path,
    model: EigenPSFs,
    lens: Lens,
    *,
    description: str = "",
    provenance: dict | None = None,
    coverage: Coverage | None = None,
) -> Path:
    """Write an empirical PSF model as NetCDF-4 (HDF5, via h5netcdf) in the ``optisim-psf-model`` v1 layout.

    Parameters
    ----------
    path : output file (``.nc``)
    model : EigenPSFs, e.g. from :func:`eigen_psfs_from_samples`
    lens : Lens, the nominal lens the PSFs were measured with; its ``sensor_shape`` must be the model's. Its sensor,
        pixel size and optics are stored (``lens_toml``); its aberrations are not used when the file is read back
        as the forward model.
    description : str, free text
    provenance : dict or None, JSON-serialisable record of how the model was made (bead files, fits, settings)
    coverage : :class:`optisim.coverage.Coverage` or None, the model's coverage maps, stored as the optional
        variables ``psf_spread``, ``bead_distance``, ``confidence`` on ``(coverage_y, coverage_x)``
        (:func:`optisim.coverage.coverage_dataset`); its sensor must be the model's

    Returns
    -------
    Path of the written file.
    """
    import xarray as xr

    path = Path(path)
    _check_model(model, "model")
    if tuple(model.sensor_shape) != tuple(lens.sensor_shape):
        raise ValueError(
            f"lens: the model was built for a {model.sensor_shape[0]}x{model.sensor_shape[1]} sensor, the lens has "
            f"{lens.sensor_shape[0]}x{lens.sensor_shape[1]}"
        )
    try:
        provenance_json = json.dumps(provenance or {}, sort_keys=True, default=_jsonable)
    except (TypeError, ValueError) as err:
        raise ValueError(f"provenance: expected a JSON-serialisable dict, got one that is not ({err})") from None
    k, kh, kw = model.kernels.shape
    unit_field = {"units": "1", "long_name": "normalised field (half the longer sensor side = 1)"}
    ds = xr.Dataset(
        data_vars={
            "kernels": (
                ("k", "y", "x"),
                np.asarray(model.kernels, dtype=np.float32),
                {"long_name": "eigen-PSFs", "units": "1 (unit L2 norm)"},
            ),
            "coefficients": (
                ("field_y", "field_x", "k"),
                np.asarray(model.coefficients, dtype=np.float64),
                {"long_name": "coefficient of each eigen-PSF at each grid point (bicubic weight maps)", "units": "1"},
            ),
            "singular_values": (
                ("s",),
                np.asarray(model.singular_values, dtype=np.float64),
                {"long_name": "singular values of the measured PSF matrix (each PSF summing to 1)", "units": "1"},
            ),
        },
        coords={
            "field_y": ("field_y", np.asarray(model.field_y, dtype=np.float64), unit_field),
            "field_x": ("field_x", np.asarray(model.field_x, dtype=np.float64), unit_field),
            "k": ("k", np.arange(k, dtype=np.int64), {"long_name": "eigen-PSF index"}),
            "y": ("y", np.arange(kh, dtype=np.int64) - kh // 2, {"units": "pixel", "long_name": "y from chief ray"}),
            "x": ("x", np.arange(kw, dtype=np.int64) - kw // 2, {"units": "pixel", "long_name": "x from chief ray"}),
        },
        attrs={
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "optisim_version": __version__,
            "sensor_shape": [int(v) for v in model.sensor_shape],
            "pixel_size_um": float(lens.pixel_um),
            "lens_toml": lens.to_toml(),
            "lens_note": LENS_NOTE,
            "rank": int(model.rank),
            "relative_error": float(model.relative_error),
            "description": str(description),
            "provenance": provenance_json,
            "conventions": CONVENTIONS,
        },
    )
    if coverage is not None:
        if tuple(coverage.sensor_shape) != tuple(model.sensor_shape):
            raise ValueError(
                f"coverage: expected maps of the model's sensor {tuple(model.sensor_shape)}, got a coverage of "
                f"{tuple(coverage.sensor_shape)}"
            )
        extra = coverage_dataset(coverage)
        ds = ds.merge(extra)
        ds.attrs.update(extra.attrs)
    ds.to_netcdf(path, engine="h5netcdf", invalid_netcdf=False)
    return path


def _open(path) -> tuple[Path, xr.Dataset]:
    """The file loaded into memory, after the format check."""
    from optisim._netcdf import load_dataset

    path = Path(path)
    ds = load_dataset(path, "PSF model file")
    name = ds.attrs.get("format")
    if name != FORMAT_NAME:
        raise ValueError(f"{path}: not an optisim PSF model (format {name!r})")
    version = int(ds.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: {FORMAT_NAME} version {version}; this optisim reads version {FORMAT_VERSION}")
    missing = [v for v in ("kernels", "coefficients", "singular_values", "field_y", "field_x") if v not in ds]
    if missing:
        raise ValueError(f"{path}: the PSF model lacks the variable(s) {', '.join(missing)}")
    return path, ds


def _load(path) -> tuple[xr.Dataset, Lens, EigenPSFs]:
    path, ds = _open(path)
    kernels = ds["kernels"].transpose("k", "y", "x").values.astype(np.float32)
    coefficients = ds["coefficients"].transpose("field_y", "field_x", "k").values.astype(np.float64)
    lens = Lens.from_toml(str(ds.attrs.get("lens_toml", "")), source=f"{path} (lens_toml)")
    sensor = tuple(int(v) for v in np.atleast_1d(ds.attrs.get("sensor_shape", ())))
    if sensor != tuple(lens.sensor_shape):
        raise ValueError(f"{path}: sensor_shape {list(sensor)} does not match the lens's {list(lens.sensor_shape)}")
    model = EigenPSFs(
        kernels=kernels,
        coefficients=coefficients,
        field_y=ds["field_y"].values.astype(np.float64),
        field_x=ds["field_x"].values.astype(np.float64),
        sensor_shape=sensor,
        singular_values=ds["singular_values"].values.astype(np.float64),
    )
    _check_model(model, str(path))
    if int(ds.attrs.get("rank", model.rank)) != model.rank:
        raise ValueError(f"{path}: attribute rank = {ds.attrs['rank']} but the file holds {model.rank} eigen-PSFs")
    return ds, lens, model


def read_psf_model(path) -> tuple[Lens, EigenPSFs]:
    """Read an ``optisim-psf-model`` file: the nominal lens (sensor, pixel, optics) and the low-rank PSF model.

    The model gives the same weight maps and PSFs as the one written (every array is stored at full precision).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not NetCDF-4, another format or version, inconsistent shapes, or a sensor that differs from the lens's.
    """
    _, lens, model = _load(path)
    return lens, model


def psf_model_info(path) -> dict:
    """What a PSF model file says about itself: description, provenance (parsed), rank, error, sensor, digest."""
    ds, lens, model = _load(path)
    return {
        "path": str(path),
        "description": str(ds.attrs.get("description", "")),
        "provenance": json.loads(str(ds.attrs.get("provenance", "{}"))),
        "rank": model.rank,
        "relative_error": model.relative_error,
        "kernel_size": int(model.kernels.shape[-1]),
        "grid": [len(model.field_y), len(model.field_x)],
        "sensor_shape": list(lens.sensor_shape),
        "pixel_size_um": lens.pixel_um,
        "digest": model_digest(model),
    }


def write_model_groups(f: h5py.File, model: EigenPSFs, grid_ds=None, *, compression: dict | None = None) -> None:
    """Store a low-rank model in an open HDF5 file: ``/lowrank`` (kernels, coefficients, singular values) and
    ``/psf_grid`` (``field_y``, ``field_x``; with a lens's PSF grid ``grid_ds`` also ``psf``, ``zernike``, ``mode``).
    """
    g = f.create_group("psf_grid")
    if grid_ds is None:
        g.attrs.update(description="field grid of an empirical PSF model's coefficients (no PSF grid)")
    else:
        g.attrs.update(description="PSF grid of the lens (optisim-psf-grid layout), each PSF sums to 1 over (y, x)")
        g.create_dataset("psf", data=grid_ds["psf"].values.astype("f4"), **(compression or {}))
        z = g.create_dataset("zernike", data=grid_ds["zernike"].values)
        z.attrs.update({k: str(v) for k, v in grid_ds["zernike"].attrs.items()})
        g.create_dataset("mode", data=grid_ds["mode"].values)
        g.attrs["axes"] = "psf: field_y, field_x, y, x; zernike: field_y, field_x, mode"
    g.create_dataset("field_y", data=model.field_y).attrs["units"] = "normalised field"
    g.create_dataset("field_x", data=model.field_x).attrs["units"] = "normalised field"
    m = f.create_group("lowrank")
    m.create_dataset("kernels", data=model.kernels)
    m.create_dataset("coefficients", data=model.coefficients)
    m.create_dataset("singular_values", data=model.singular_values)
    m.attrs.update(rank=model.rank, relative_error=model.relative_error, axes="kernels: k, y, x")


def read_model_groups(f: h5py.File, sensor_shape) -> EigenPSFs:
    """The low-rank model stored by :func:`write_model_groups` (a lens's or an empirical one)."""
    m = f["lowrank"]
    return EigenPSFs(
        kernels=m["kernels"][:],
        coefficients=m["coefficients"][:],
        field_y=f["psf_grid/field_y"][:],
        field_x=f["psf_grid/field_x"][:],
        sensor_shape=tuple(sensor_shape),
        singular_values=m["singular_values"][:],
    )
