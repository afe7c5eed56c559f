"""Model coverage: where across the field a calibrated PSF model is constrained by the beads, and where it is not.

A calibration fits its field model to beads at scattered field points. Between and beyond them the model is an
interpolation or an extrapolation, and nothing in a deblurred image shows which. A :class:`Coverage` holds two maps
on a regular field grid (:func:`optisim.field.field_grid`, normalised field coordinates of :mod:`optisim.field`):

* ``psf_spread``: the bootstrap relative PSF spread. The calibration refits the model on B resamplings of its beads
  (with replacement); at each grid point ``h`` it takes ``|| std_b PSF_b(h) ||_F / || mean_b PSF_b(h) ||_F`` over
  the B models (standard deviation per PSF pixel, Frobenius norms over the PSF window). Unitless: 0.1 means the
  bootstrap models' PSFs differ from their mean by 10 % of its norm.
* ``bead_distance``: the distance, in normalised field units, from ``h`` to the nearest bead, measured in the
  model's symmetry-reduced coordinates: the plain field distance for ``symmetry='none'``; for
  ``symmetry='rotational'`` the difference of field radii about the fitted optical centre (a bead constrains every
  azimuth at its radius).

Confidence
----------
The two are combined into a confidence in [0, 1] (:func:`confidence_from`)::

    confidence = exp(-psf_spread / SPREAD_SCALE) * exp(-0.5 * (bead_distance / DISTANCE_SCALE)²)

with ``SPREAD_SCALE = 0.1`` (the default; see below) and ``DISTANCE_SCALE = 0.15``. Why these scales: a bootstrap
spread of 10 % of the PSF's norm means models fitted to equally valid subsets of the beads disagree visibly (PSF
correlations near 0.9, where an edge PSF starts to look elongated the wrong way), and the spread term alone is then
exp(-1) = 0.37. A distance of 0.15 in normalised field units (0.15 of the half-sensor) is about the typical spacing
of the beads in a calibration image (a few tens of beads over the field); a point one bead spacing from every bead
has a distance term of exp(-0.5) = 0.61, two spacings 0.14. A pixel with confidence below ``LOW_CONFIDENCE = 0.5``
is "beyond coverage": ``optisim deblur`` warns when an image reaches there. The confidence is a convention for
flagging, not a calibrated probability; the two underlying maps are stored as well, so a reader can combine them
otherwise.

Measured bead PSFs are noisy, and a model fitted to them is uncertain even where the beads are dense (on the real
fibre beads of ``data/real`` the bootstrap spread is 0.1-0.15 next to the beads). With the fixed scale every pixel
would then be "beyond coverage", which says nothing about *where* the model is weakest. So a calibration sets the
map's own ``spread_scale`` (stored as ``coverage_spread_scale``) from its beads:
``max(SPREAD_SCALE, 2 s_ref / ln 2)``, where ``s_ref`` is the median spread at the grid points within
``DISTANCE_SCALE / 2`` of a bead (:func:`calibration.validate.bootstrap_coverage`). "Beyond coverage" then means at
least twice as uncertain as where the beads are (or far from every bead), and ``s_ref`` itself, the model's PSF
uncertainty where it is best constrained, is reported in ``calibration.json`` (``model.coverage.reference_spread``).
Likewise the distance scale is the beads' own spacing where that is wider: ``max(DISTANCE_SCALE, d_nn)``, ``d_nn``
the median distance from each bead to its nearest neighbour in the same symmetry-reduced coordinates (30 beads over
the whole field are about 0.35 apart), stored as ``coverage_distance_scale``: "beyond coverage" by distance alone
means farther from every bead than the beads are from each other.

Files
-----
``coverage_dataset`` gives the variables ``psf_spread``, ``bead_distance`` and ``confidence``, float64 on the
dimensions ``(coverage_y, coverage_x)`` (coordinates of the same names: normalised field y and x of the grid), with
the attributes ``coverage_symmetry``, ``coverage_sensor_shape``, ``coverage_spread_scale``,
``coverage_distance_scale``, ``coverage_low_confidence`` and ``coverage_conventions``. An ``optisim-psf-model``
file (:func:`optisim.psfmodel.write_psf_model` with ``coverage=``) embeds them; a parametric calibration writes them
to a standalone ``coverage.nc`` beside ``lens.toml`` (:func:`write_coverage`, format ``optisim-coverage`` version 1:
the same variables and attributes plus ``format``, ``format_version``, ``optisim_version``, ``sensor_shape``,
``description`` and ``provenance`` (JSON)). :func:`read_coverage` reads either file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optisim._version import __version__
from optisim.field import pixel_to_field

__all__ = [
    "DISTANCE_SCALE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOW_CONFIDENCE",
    "SPREAD_SCALE",
    "Coverage",
    "beyond_coverage",
    "confidence_from",
    "coverage_dataset",
    "read_coverage",
    "write_coverage",
]

SPREAD_SCALE = 0.1  # relative bootstrap PSF spread at which the spread term is exp(-1)
DISTANCE_SCALE = 0.15  # normalised field distance (about one bead spacing) at which the distance term is exp(-1/2)
LOW_CONFIDENCE = 0.5  # below this a pixel lies beyond the calibration's coverage
FORMAT_NAME = "optisim-coverage"
FORMAT_VERSION = 1
SYMMETRIES = ("none", "rotational")
VARIABLES = ("psf_spread", "bead_distance")
PSF_MODEL_FORMAT = "optisim-psf-model"  # optisim.psfmodel.FORMAT_NAME (not imported: psfmodel imports this module)
CONVENTIONS = (
    "coverage_y, coverage_x are normalised field coordinates of a regular grid spanning the sensor's outermost pixel "
    "centres (h = (pixel - (n - 1) / 2) / (max(ny, nx) / 2)); psf_spread = ||std_b PSF_b(h)||_F / ||mean_b "
    "PSF_b(h)||_F over bootstrap refits of the model (unitless); bead_distance = distance to the nearest bead in "
    "the model's symmetry-reduced coordinates (normalised field units; for 'rotational' the difference of field "
    "radii about the optical centre); confidence = exp(-psf_spread / spread_scale) * exp(-0.5 * (bead_distance / "
    "distance_scale)^2); pixels with confidence < low_confidence lie beyond the calibration's coverage"
)


def confidence_from(psf_spread, bead_distance, *, spread_scale=SPREAD_SCALE, distance_scale=DISTANCE_SCALE):
    """Confidence in [0, 1] from the bootstrap PSF spread and the distance to the nearest bead (module docstring).

    Parameters
    ----------
    psf_spread : array of float >= 0, relative bootstrap PSF spread (unitless)
    bead_distance : array of float >= 0, normalised field units; broadcast against ``psf_spread``
    spread_scale, distance_scale : float > 0, the scales of the two terms

    Returns
    -------
    float64 array of the broadcast shape, ``exp(-spread / spread_scale) * exp(-0.5 (distance / distance_scale)²)``:
    1 at a bead with no spread, falling monotonically in each argument.

    Examples
    --------
    >>> float(confidence_from(0.0, 0.0)), round(float(confidence_from(0.1, 0.0)), 3)
    (1.0, 0.368)
    """
    for name, value in (("spread_scale", spread_scale), ("distance_scale", distance_scale)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name}: expected a positive finite scale, got {value!r}")
    spread = np.asarray(psf_spread, dtype=np.float64)
    distance = np.asarray(bead_distance, dtype=np.float64)
    for name, a in (("psf_spread", spread), ("bead_distance", distance)):
        if not np.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"{name}: expected finite values >= 0, got values in [{a.min():.3g}, {a.max():.3g}]")
    return np.exp(-spread / spread_scale) * np.exp(-0.5 * (distance / distance_scale) ** 2)


def _check_axis(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < 1 or not np.isfinite(a).all() or (np.diff(a) <= 0).any():
        raise ValueError(f"{name}: expected a 1-D increasing array of finite field coordinates, got {a!r}")
    return a


@dataclass(frozen=True, eq=False)
class Coverage:
    """Model-coverage maps on a regular field grid (see the module docstring).

    Attributes
    ----------
    field_y : (Gy,) float64, normalised field y of the grid rows, increasing
    field_x : (Gx,) float64, normalised field x of the grid columns, increasing
    psf_spread : (Gy, Gx) float64 >= 0, bootstrap relative PSF spread, unitless
    bead_distance : (Gy, Gx) float64 >= 0, normalised field units, to the nearest bead in the symmetry-reduced
        coordinates
    sensor_shape : (ny, nx) pixels, the sensor the field coordinates refer to
    symmetry : {'none', 'rotational'}, the coordinates ``bead_distance`` was measured in
    spread_scale : float > 0, the ``psf_spread`` at which the spread term of the confidence is exp(-1)
        (:data:`SPREAD_SCALE` unless the calibration set it from its beads' own spread, module docstring)
    distance_scale : float > 0, normalised field units, the ``bead_distance`` at which the distance term is
        exp(-1/2) (:data:`DISTANCE_SCALE` unless the calibration set it from its beads' spacing)
    """

    field_y: np.ndarray
    field_x: np.ndarray
    psf_spread: np.ndarray
    bead_distance: np.ndarray
    sensor_shape: tuple[int, int]
    symmetry: str = "none"
    spread_scale: float = SPREAD_SCALE
    distance_scale: float = DISTANCE_SCALE

    def __post_init__(self):
        fy, fx = _check_axis(self.field_y, "field_y"), _check_axis(self.field_x, "field_x")
        shape = (fy.size, fx.size)
        for name in VARIABLES:
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.shape != shape:
                raise ValueError(f"{name}: expected shape (Gy, Gx) = {shape} (the field grid), got {a.shape}")
            object.__setattr__(self, name, a)
        confidence_from(self.psf_spread, self.bead_distance, spread_scale=self.spread_scale,
                        distance_scale=self.distance_scale)  # finite, >= 0  # fmt: skip
        object.__setattr__(self, "spread_scale", float(self.spread_scale))
        object.__setattr__(self, "distance_scale", float(self.distance_scale))
        try:
            ny, nx = (int(v) for v in self.sensor_shape)
        except (TypeError, ValueError):
            raise ValueError(f"sensor_shape: expected (ny, nx) pixels, got {self.sensor_shape!r}") from None
        if ny < 1 or nx < 1:
            raise ValueError(f"sensor_shape: expected positive (ny, nx) pixels, got ({ny}, {nx})")
        if self.symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry: expected one of {SYMMETRIES}, got {self.symmetry!r}")
        object.__setattr__(self, "field_y", fy)
        object.__setattr__(self, "field_x", fx)
        object.__setattr__(self, "sensor_shape", (ny, nx))

    @property
    def confidence(self) -> np.ndarray:
        """(Gy, Gx) float64 in [0, 1], :func:`confidence_from` of the two maps."""
        return confidence_from(self.psf_spread, self.bead_distance, spread_scale=self.spread_scale,
                               distance_scale=self.distance_scale)  # fmt: skip

    def confidence_map(self, offset=(0, 0), shape=None) -> np.ndarray:
        """Confidence of the sensor pixels ``offset + [0, h) x [0, w)`` (rows, columns), ``(h, w)`` float32.

        Bilinear over the field grid in normalised field coordinates (:func:`optisim.field.pixel_to_field`), held
        at the grid's edge beyond it. ``shape`` defaults to the rest of the sensor from ``offset``; the region may
        reach past the sensor (its pixels take the edge values).
        """
        try:
            y0, x0 = (int(v) for v in offset)
        except (TypeError, ValueError):
            raise ValueError(f"offset: expected (y0, x0) pixels, got {offset!r}") from None
        ny, nx = self.sensor_shape
        try:
            h, w = (ny - y0, nx - x0) if shape is None else (int(v) for v in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape: expected (h, w) pixels, got {shape!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"shape: expected a region of at least 1x1 pixels, got {h}x{w}")
        rows, cols = np.arange(y0, y0 + h), np.arange(x0, x0 + w)
        _, hy = pixel_to_field(rows, np.zeros_like(rows), self.sensor_shape)
        hx, _ = pixel_to_field(np.zeros_like(cols), cols, self.sensor_shape)
        by, bx = _linear_weights(hy, self.field_y), _linear_weights(hx, self.field_x)
        return (by @ self.confidence @ bx.T).astype(np.float32)


def beyond_coverage(confidence, name: str = "the image") -> str | None:
    """The warning for a confidence map that reaches below :data:`LOW_CONFIDENCE`, or None when none of it does.

    Parameters
    ----------
    confidence : (h, w) array in [0, 1], e.g. :meth:`Coverage.confidence_map` of an image's sensor region
    name : str, what the map covers (a file name)

    Examples
    --------
    >>> beyond_coverage(np.array([[0.9, 0.2], [0.8, 0.7]]), "in.tif")[:53]
    "25 % of in.tif lies beyond the calibration's coverage"
    >>> beyond_coverage(np.full((2, 2), 0.9)) is None
    True
    """
    confidence = np.asarray(confidence)
    low = confidence < LOW_CONFIDENCE
    if not low.any():
        return None
    share = 100 * float(low.mean())
    share_text = f"{share:.0f} %" if share >= 1 else "< 1 %"
    return (
        f"{share_text} of {name} lies beyond the calibration's coverage (confidence < {LOW_CONFIDENCE}, lowest "
        f"{float(confidence.min()):.2f}); treat the result there with caution"
    )


def _linear_weights(h: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``(len(h), len(grid))`` matrix of linear interpolation weights, clamped to the grid's ends."""
    weights = np.zeros((h.size, grid.size))
    if grid.size == 1:
        weights[:, 0] = 1.0
        return weights
    position = np.interp(h, grid, np.arange(grid.size))  # clamped to [0, G - 1]
    i0 = np.minimum(np.floor(position).astype(int), grid.size - 2)
    frac = position - i0
    rows = np.arange(h.size)
    weights[rows, i0] = 1.0 - frac
    weights[rows, i0 + 1] += frac
    return weights


def coverage_dataset(cov: Coverage):
    """The coverage maps as an ``xarray.Dataset`` (variables, coordinates and attributes of the module docstring)."""
    import xarray as xr

    dims = ("coverage_y", "coverage_x")
    field = "normalised field (half the longer sensor side = 1)"
    return xr.Dataset(
        data_vars={
            "psf_spread": (
                dims,
                cov.psf_spread,
                {"long_name": "bootstrap relative PSF spread ||std PSF||_F / ||mean PSF||_F", "units": "1"},
            ),
            "bead_distance": (
                dims,
                cov.bead_distance,
                {"long_name": f"distance to the nearest bead ({cov.symmetry} symmetry)", "units": field},
            ),
            "confidence": (dims, cov.confidence, {"long_name": "model confidence in [0, 1]", "units": "1"}),
        },
        coords={
            "coverage_y": ("coverage_y", cov.field_y, {"units": "1", "long_name": f"{field}, y"}),
            "coverage_x": ("coverage_x", cov.field_x, {"units": "1", "long_name": f"{field}, x"}),
        },
        attrs={
            "coverage_symmetry": cov.symmetry,
            "coverage_sensor_shape": list(cov.sensor_shape),
            "coverage_spread_scale": cov.spread_scale,
            "coverage_distance_scale": cov.distance_scale,
            "coverage_low_confidence": LOW_CONFIDENCE,
            "coverage_conventions": CONVENTIONS,
        },
    )


def write_coverage(path, cov: Coverage, *, description: str = "", provenance: dict | None = None) -> Path:
    """Write a standalone ``optisim-coverage`` v1 file (NetCDF-4 / HDF5 via h5netcdf), e.g. ``coverage.nc``.

    Parameters
    ----------
    path : output file (``.nc``); written to a temporary sibling and renamed into place
    cov : Coverage
    description : str, free text; provenance : JSON-serialisable dict or None, how the maps were made

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    try:
        provenance_json = json.dumps(provenance or {}, sort_keys=True, default=str)
    except (TypeError, ValueError) as err:
        raise ValueError(f"provenance: expected a JSON-serialisable dict, got one that is not ({err})") from None
    ds = coverage_dataset(cov)
    ds.attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "optisim_version": __version__,
        "sensor_shape": list(cov.sensor_shape),
        "description": str(description),
        "provenance": provenance_json,
        **ds.attrs,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_coverage(path) -> Coverage | None:
    """The coverage maps of a ``coverage.nc`` (``optisim-coverage``) or a ``psf_model.nc`` (``optisim-psf-model``).

    Returns
    -------
    Coverage, or None for a PSF model file without coverage variables.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not NetCDF-4, another format or version, missing coverage variables, or maps whose shape is not the grid's.
    """
    from optisim._netcdf import load_dataset

    path = Path(path)
    ds = load_dataset(path, "coverage file")
    name = ds.attrs.get("format")
    if name not in (FORMAT_NAME, PSF_MODEL_FORMAT):
        raise ValueError(f"{path}: not an optisim coverage or PSF model file (format {name!r})")
    present = [v for v in (*VARIABLES, "coverage_y", "coverage_x") if v in ds.variables]
    if name == PSF_MODEL_FORMAT and not present:
        return None
    if name == FORMAT_NAME and int(ds.attrs.get("format_version", -1)) != FORMAT_VERSION:
        version = ds.attrs.get("format_version")
        raise ValueError(f"{path}: {FORMAT_NAME} version {version}; this optisim reads version {FORMAT_VERSION}")
    missing = [v for v in (*VARIABLES, "coverage_y", "coverage_x") if v not in present]
    if missing:
        raise ValueError(f"{path}: the coverage lacks the variable(s) {', '.join(missing)}")
    for v in VARIABLES:
        if ds[v].dims != ("coverage_y", "coverage_x"):
            raise ValueError(f"{path}: {v}: expected dimensions (coverage_y, coverage_x), got {ds[v].dims}")
    sensor = ds.attrs.get("coverage_sensor_shape", ds.attrs.get("sensor_shape"))
    try:
        return Coverage(
            field_y=ds["coverage_y"].values,
            field_x=ds["coverage_x"].values,
            psf_spread=ds["psf_spread"].values,
            bead_distance=ds["bead_distance"].values,
            sensor_shape=tuple(np.atleast_1d(sensor)) if sensor is not None else None,
            symmetry=str(ds.attrs.get("coverage_symmetry", "")),
            spread_scale=float(ds.attrs.get("coverage_spread_scale", SPREAD_SCALE)),
            distance_scale=float(ds.attrs.get("coverage_distance_scale", DISTANCE_SCALE)),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
