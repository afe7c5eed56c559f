"""Validation where it matters: by field radius, by extrapolation past the beads, and a coverage map.

A single held-out number over the whole field hides the edges, where the blur varies most and where a model fitted
to sparse beads extrapolates. So every field model is checked three ways:

* **by band**: the held-out beads' PSF correlation with the model, per band of the normalised field radius
  ``h`` (from the sensor centre, :mod:`optisim.field`): :data:`BANDS` = h < 0.35, 0.35-0.6, 0.6-0.85, > 0.85;
* **radial hold-out** (extrapolation): models refitted to the beads inside a radius (all but the outermost
  ``fraction`` of the beads) predict the outer beads' PSFs; reported per band for every model kind, so a user sees
  how each one behaves past its beads;
* **coverage**: a bootstrap over the beads (the model refitted to ``n`` resamplings with replacement) gives the
  spread of the predicted PSF at every point of a field grid, ``||std_b PSF_b(h)|| / ||mean_b PSF_b(h)||``
  (Frobenius); with the distance from each grid point to the nearest bead in the model's symmetry-reduced
  coordinates (field distance without symmetry; ``|r - r_bead|`` about the optical centre for a rotational model)
  it makes the :class:`optisim.coverage.Coverage` stored with the calibrated model, whose spread scale is set from
  the spread next to the beads (:func:`spread_scale_from`).

PSF correlation is Pearson's correlation of the two PSF windows' pixels (1 for identical shapes, whatever their
scale).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from optisim.field import field_grid, pixel_to_field

__all__ = [
    "BANDS",
    "LensPSFs",
    "band_labels",
    "bootstrap_coverage",
    "by_band",
    "distance_scale_from",
    "fit_parametric",
    "psf_correlation",
    "radial_split",
    "radial_validation",
    "radial_validation_parametric",
    "reference_spread",
    "spread_scale_from",
]

BANDS = (0.35, 0.6, 0.85)  # edges of the field-radius bands (normalised field units)


def band_labels() -> list[str]:
    """``['h<0.35', '0.35-0.6', '0.6-0.85', 'h>0.85']`` for :data:`BANDS`."""
    edges = [f"{e:g}" for e in BANDS]
    return [f"h<{edges[0]}", *[f"{a}-{b}" for a, b in itertools.pairwise(edges)], f"h>{edges[-1]}"]


def psf_correlation(a, b) -> np.ndarray:
    """(N,) Pearson correlation of paired PSF windows ``a``, ``b`` (N, w, w)."""
    a = np.asarray(a, float).reshape(len(a), -1)
    b = np.asarray(b, float).reshape(len(b), -1)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    return (a * b).sum(axis=1) / np.maximum(den, 1e-300)


def _stats(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"beads": 0, "median": None, "min": None, "max": None}
    return {"beads": len(v), "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def by_band(values, h) -> dict:
    """``{band label: {'beads', 'median', 'min', 'max'}}`` of ``values`` grouped by the field radius ``h``."""
    v, h = np.asarray(values, float), np.asarray(h, float)
    band = np.searchsorted(np.asarray(BANDS), h, side="right")
    return {label: _stats(v[band == k]) for k, label in enumerate(band_labels())}


def radial_split(h, fraction: float, *, minimum: int = 3) -> tuple[np.ndarray, float]:
    """(N,) bool mask of the outer beads (the outermost ``fraction`` by field radius ``h``) and the inner radius.

    Raises ValueError when fewer than ``minimum`` beads would be outer, or inner.
    """
    h = np.asarray(h, float)
    if not 0 < fraction < 1:
        raise ValueError(f"radial_holdout: expected a fraction in (0, 1), got {fraction}")
    k = math.floor(fraction * len(h))
    if k < minimum or len(h) - k < minimum:
        raise ValueError(f"radial hold-out: {len(h)} beads give {k} outer beads; need at least {minimum} of each")
    order = np.argsort(h)
    outer = np.zeros(len(h), dtype=bool)
    outer[order[len(h) - k :]] = True
    return outer, float(h[order[len(h) - k - 1]])


def _grid_points(sensor_shape, grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    fy, fx = field_grid(sensor_shape, grid)
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    return fy, fx, yy.ravel(), xx.ravel()


def bead_distance(hy_grid, hx_grid, hy, hx, *, centre=None) -> np.ndarray:
    """Distance from each grid point to the nearest bead: in the field plane (``centre`` None) or in field radius
    about the optical centre ``(cy, cx)`` (a rotational model: every azimuth at a bead's radius is covered)."""
    if centre is None:
        d = np.hypot(hy_grid[:, None] - hy[None, :], hx_grid[:, None] - hx[None, :])
    else:
        rg = np.hypot(hy_grid - centre[0], hx_grid - centre[1])
        rb = np.hypot(hy - centre[0], hx - centre[1])
        d = np.abs(rg[:, None] - rb[None, :])
    return d.min(axis=1)


def bootstrap_coverage(builder, hy, hx, sensor_shape, *, symmetry: str, centre=None, n: int = 20, grid=(17, 17),
                       seed: int = 0, progress=None):  # fmt: skip
    """The coverage of a model fitted to beads at ``(hy, hx)`` (module docstring).

    Parameters
    ----------
    builder : callable ``indices -> predictor`` with ``predictor.psfs_at(hx, hy) -> (M, w, w)``: the model refitted
        to the beads ``indices`` (a resampling with replacement)
    hy, hx : (N,) normalised field points of the beads; sensor_shape : (ny, nx)
    symmetry : 'none' or 'rotational'; centre : (cy, cx) optical centre for 'rotational'
    n : bootstrap resamplings (>= 2); grid : (Gy, Gx) field grid of the map; seed : random seed
    progress : callable(k, n) or None

    Returns
    -------
    optisim.coverage.Coverage
    """
    from optisim.coverage import Coverage

    if n < 2:
        raise ValueError(f"bootstrap: expected at least 2 resamplings, got {n}")
    hy, hx = np.asarray(hy, float), np.asarray(hx, float)
    fy, fx, gy, gx = _grid_points(sensor_shape, grid)
    rng = np.random.default_rng(seed)
    total = total2 = None
    done = 0
    for k in range(n):
        idx = rng.choice(len(hy), size=len(hy), replace=True)
        try:
            p = builder(idx).psfs_at(gx, gy)
        except (ValueError, np.linalg.LinAlgError):  # a resampling too degenerate to fit (few distinct beads): skip it
            continue
        total = p if total is None else total + p
        total2 = p**2 if total2 is None else total2 + p**2
        done += 1
        if progress is not None:
            progress(k + 1, n)
    if done < 2:
        raise ValueError(f"bootstrap: only {done} of {n} resamplings could be fitted; too few beads for a coverage map")
    mean = total / done
    var = np.clip(total2 / done - mean**2, 0, None) * done / (done - 1)
    spread = np.sqrt(var.sum(axis=(1, 2))) / np.maximum(np.sqrt((mean**2).sum(axis=(1, 2))), 1e-300)
    dist = bead_distance(gy, gx, hy, hx, centre=centre if symmetry == "rotational" else None)
    shape = (len(fy), len(fx))
    return Coverage(
        field_y=fy, field_x=fx, psf_spread=spread.reshape(shape), bead_distance=dist.reshape(shape),
        sensor_shape=tuple(int(v) for v in sensor_shape), symmetry=symmetry,
        spread_scale=spread_scale_from(spread, dist),
        distance_scale=distance_scale_from(hy, hx, centre=centre if symmetry == "rotational" else None),
    )  # fmt: skip


def distance_scale_from(hy, hx, *, centre=None) -> float:
    """``max(DISTANCE_SCALE, d_nn)`` (:mod:`optisim.coverage`): ``d_nn`` the median distance from each bead to its
    nearest neighbour, in the field plane (``centre`` None) or in field radius about the optical centre."""
    from optisim.coverage import DISTANCE_SCALE

    hy, hx = np.asarray(hy, float), np.asarray(hx, float)
    if centre is None:
        d = np.hypot(hy[:, None] - hy[None, :], hx[:, None] - hx[None, :])
    else:
        r = np.hypot(hy - centre[0], hx - centre[1])
        d = np.abs(r[:, None] - r[None, :])
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1) if len(d) > 1 else np.zeros(1)
    return max(DISTANCE_SCALE, float(np.median(nearest)))


def reference_spread(spread, distance) -> float:
    """Median bootstrap spread at the grid points within ``DISTANCE_SCALE / 2`` of a bead (all points if none are):
    the model's PSF uncertainty where the beads constrain it best."""
    from optisim.coverage import DISTANCE_SCALE

    spread, distance = np.asarray(spread, float).ravel(), np.asarray(distance, float).ravel()
    near = distance <= DISTANCE_SCALE / 2
    return float(np.median(spread[near] if near.any() else spread))


def spread_scale_from(spread, distance) -> float:
    """``max(SPREAD_SCALE, 2 s_ref / ln 2)`` (:mod:`optisim.coverage`): a point is beyond coverage by its spread
    alone once it is twice as uncertain as the model is next to its beads."""
    from optisim.coverage import SPREAD_SCALE

    return max(SPREAD_SCALE, 2.0 * reference_spread(spread, distance) / math.log(2.0))


def field_radius(rows, cols, sensor_shape) -> np.ndarray:
    """Normalised field radius ``h`` of pixel positions (from the sensor centre)."""
    hx, hy = pixel_to_field(rows, cols, sensor_shape)
    return np.hypot(hx, hy)


def radial_validation(psfs, hy, hx, sensor_shape, *, fraction: float, seed: int = 0, grid=(9, 9),
                      symmetries=("none", "rotational")) -> dict:  # fmt: skip
    """Extrapolation: each symmetry's model, fitted to the inner beads only, predicts the outer beads.

    Parameters
    ----------
    psfs : (N, w, w) measured centred PSFs; hy, hx : (N,) normalised field points; sensor_shape : (ny, nx)
    fraction : the outermost share of the beads (by field radius from the sensor centre) held out
    seed, grid : as :func:`calibration.empirical.choose_model`

    Returns
    -------
    dict: ``fraction``, ``inner_radius`` (normalised field), ``outer_beads`` and ``models``:
    ``{symmetry: {'rank', 'psf_correlation': {'beads', 'median', 'min', 'max'}, 'by_band': by_band(...)}}``, or
    ``{symmetry: {'error': why}}`` where that model cannot be fitted to the inner beads.
    """
    from calibration.empirical import choose_model

    psfs, hy, hx = np.asarray(psfs, float), np.asarray(hy, float), np.asarray(hx, float)
    h = np.hypot(hx, hy)
    outer, inner_radius = radial_split(h, fraction)
    out = {"fraction": fraction, "inner_radius": inner_radius, "outer_beads": int(outer.sum()), "models": {}}
    inner = ~outer
    for symmetry in symmetries:
        try:
            fit = choose_model(psfs[inner], hy[inner], hx[inner], sensor_shape, symmetry=symmetry, seed=seed,
                               grid=grid, centre_bootstrap=0)  # fmt: skip
        except ValueError as err:
            out["models"][symmetry] = {"error": str(err)}
            continue
        corr = psf_correlation(psfs[outer], fit.model.psfs_at(hx[outer], hy[outer]))
        out["models"][symmetry] = {
            "rank": fit.rank, "psf_correlation": _stats(corr), "by_band": by_band(corr, h[outer]),
        }  # fmt: skip
    return out


def fit_parametric(fits, sensor_shape, *, symmetry: str, degree: int, centre=None):
    """The parametric field fit of ``symmetry`` ('none': :func:`calibration.field.fit_field`; 'rotational':
    :func:`calibration.symfield.fit_rotational_field`, about ``centre`` when given, else a fitted centre)."""
    from calibration.field import fit_field
    from calibration.symfield import fit_rotational_field

    if symmetry == "none":
        return fit_field(fits, sensor_shape, degree=degree)
    if symmetry == "rotational":
        return fit_rotational_field(fits, sensor_shape, degree=degree, centre=centre)
    raise ValueError(f"symmetry: expected 'none' or 'rotational', got {symmetry!r}")


def radial_validation_parametric(fits, sensor_shape, *, fraction: float, degree: int,
                                 symmetries=("none", "rotational")) -> dict:  # fmt: skip
    """Extrapolation of the parametric field model: each symmetry's fit to the inner beads predicts the outer beads'
    Zernike coefficients; the error is their RMS wavefront difference (waves), per field band.

    Returns the layout of :func:`radial_validation` with ``wavefront_difference_waves_rms`` in place of
    ``psf_correlation``.
    """
    hx, hy = pixel_to_field(fits.rows, fits.cols, sensor_shape)
    h = np.hypot(hx, hy)
    outer, inner_radius = radial_split(h, fraction)
    out = {"fraction": fraction, "inner_radius": inner_radius, "outer_beads": int(outer.sum()), "models": {}}
    for symmetry in symmetries:
        try:
            fit = fit_parametric(fits.subset(~outer), sensor_shape, symmetry=symmetry, degree=degree)
        except ValueError as err:
            out["models"][symmetry] = {"error": str(err)}
            continue
        held = fits.subset(outer)
        error = held.rms_error(fit.predict(hx[outer], hy[outer]))
        out["models"][symmetry] = {
            "wavefront_difference_waves_rms": _stats(error), "by_band": by_band(error, h[outer]),
        }  # fmt: skip
    return out


class LensPSFs:
    """``psfs_at(hx, hy)`` of a lens's field model (:func:`optisim.psf.compute_psfs`, windows of ``size`` pixels):
    the predictor :func:`bootstrap_coverage` takes, for a parametric model."""

    def __init__(self, lens, size: int):
        self.lens, self.size = lens, int(size)

    def psfs_at(self, hx, hy) -> np.ndarray:
        from optisim.psf import compute_psfs

        psfs, _ = compute_psfs(self.lens, hx, hy, size=self.size, allow_undersampled=True)
        return np.asarray(psfs, dtype=np.float64)
