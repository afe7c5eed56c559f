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
  it makes the :class:`optisim.coverage.Coverage` stored with the calibrated model.

PSF correlation is Pearson's correlation of the two PSF windows' pixels (1 for identical shapes, whatever their
scale).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from optisim.field import field_grid, pixel_to_field

__all__ = ["BANDS", "band_labels", "bootstrap_coverage", "by_band", "psf_correlation", "radial_split"]

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
        except ValueError:  # a resampling too degenerate to fit (few distinct beads): skip it
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
    )  # fmt: skip


def field_radius(rows, cols, sensor_shape) -> np.ndarray:
    """Normalised field radius ``h`` of pixel positions (from the sensor centre)."""
    hx, hy = pixel_to_field(rows, cols, sensor_shape)
    return np.hypot(hx, hy)
