"""The rotationally symmetric parametric field model: Zernike field polynomials about a fitted optical centre.

Model
-----
A lens system made of rotationally symmetric surfaces is symmetric under rotation about its optical axis and under
reflection in every plane containing it. With the optical centre ``c = (cy, cx)`` (normalised field units of
:mod:`optisim.field`), ``h' = h - c`` and ``z = h'x + i h'y = r e^{iφ}``, the coefficients of a Zernike pair
``(n, ±m)``, ``m >= 0`` (``(n, m)`` the cos ``mθ`` mode, ``(n, -m)`` the sin ``mθ`` one) must then obey

    ``c_{n,m}(h) + i c_{n,-m}(h) = f_{n,m}(r²) z^m``,   ``f_{n,m}(r²) = Σ_k a_k r^{2k}``,   ``2k + m <= degree``

with real ``a_k`` (Hopkins' wave-aberration expansion: a mode of azimuthal order ``m`` turns with the field
azimuth, its amplitude a polynomial in ``r²``). ``degree`` is the total degree in ``(hx, hy)``, as for
:func:`calibration.field.fit_field`. For the default ``degree=2``:

==================  ===================================  ==============================================
mode (n, m)         coefficient at field h               Seidel name (:mod:`optisim.aberrations`)
==================  ===================================  ==============================================
(n, 0)              ``a0 + a1 r²``                        spherical (4, 0), defocus (2, 0): field curvature
(n, ±1)             ``C (h'x, h'y)``                      coma (3, ±1); degree 3 adds ``C1 r² h'``
(n, ±2)             ``A (h'x² - h'y², 2 h'x h'y)``        astigmatism (2, ±2), secondary astigmatism (4, ±2)
(n, ±3), (n, ±4)    0 (terms from degree 3 and 4 on)     trefoil, quadrafoil: not allowed below that degree
==================  ===================================  ==============================================

Every fitted mode is kept; a mode whose ``|m|`` exceeds ``degree`` has no term (its coefficient is 0 everywhere:
a field-constant trefoil is not rotationally symmetric) and its measured part shows up as the mode's residual.
A pair shares its ``a_k``; a mode fitted without its partner has its own.

Fit
---
One robust non-linear least-squares fit (``scipy.optimize.least_squares``, ``soft_l1``, analytic Jacobian) over
every mode's ``a_k`` and the centre: residuals are scaled by each bead's coefficient uncertainty combined in
quadrature with ``floor_waves``, as in :mod:`calibration.field`. The start is the best of a 9 x 9 grid of centres
over ``±0.5`` about the sensor centre (the ``a_k`` solved linearly at each). Uncertainties are the square roots of
the diagonal of ``s² (Jᵀ W J)⁻¹`` at the solution (``W`` the soft-L1 weights, ``s²`` the weighted residual
variance, at least 1). A centre outside the sensor is an error: the beads do not look rotationally symmetric.

The lens file
-------------
The centred polynomials are expanded exactly into monomials ``hx^p hy^q`` (total degree ``<= degree``), so the
result is an ordinary lens file's ``[[aberrations.terms]]``; each monomial's uncertainty is propagated linearly
from the parameters' covariance (:meth:`RotationalFieldFit.as_field_fit`).

The sign of even modes in 2D images
-----------------------------------
:func:`calibration.field.resolve_signs` aligns the beads' even-mode signs with a general field polynomial of
total degree ``degree``. A shift of the centre keeps the total degree, so that polynomial contains every
rotational field of the same degree about any centre: it needs no rotational variant and is used unchanged.

Choosing the symmetry
---------------------
:func:`choose_symmetry` compares ``none`` (:func:`calibration.field.fit_field`) with ``rotational`` by k-fold
cross-validated prediction of held-out beads' coefficients and keeps ``rotational`` unless ``none`` predicts
better by more than one standard error of the paired difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.signal import convolve2d

from calibration.field import FieldFit, fit_field, monomials
from calibration.fit import BeadFits
from optisim.aberrations import FieldModel, FieldTerm
from optisim.field import field_scale, field_to_pixel, pixel_to_field
from optisim.lens import Lens

__all__ = ["RotationalFieldFit", "choose_symmetry", "fit_rotational_field", "radial_powers"]

_RADIUS_MERGE = 1e-3  # normalised field: beads closer in radius than this count as one radius
_GRID = np.linspace(-0.5, 0.5, 9)  # start centres, normalised field about the sensor centre


def radial_powers(m: int, degree: int) -> list[int]:
    """Powers ``2k`` of ``r`` in the rotational field terms of azimuthal order ``m``: ``2k + |m| <= degree``."""
    return [2 * k for k in range((degree - abs(m)) // 2 + 1)] if abs(m) <= degree else []


def _slots(modes, degree: int) -> tuple[list[tuple[int, int]], int]:
    """Per mode ``(first parameter, number of parameters)``; the two modes of a pair ``(n, ±m)`` share theirs."""
    start, slots, total = {}, [], 0
    for n, m in modes:
        key = (n, abs(m))
        if key not in start:
            start[key] = total
            total += len(radial_powers(m, degree))
        slots.append((start[key], len(radial_powers(m, degree))))
    return slots, total


def _basis(hx, hy, centre, m: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(N, count)`` basis ``r^{2k} Re z^m`` (``m >= 0``) or ``r^{2k} Im z^|m|`` (``m < 0``), and its derivatives
    with respect to ``cy`` and ``cx``."""
    x, y = hx - centre[1], hy - centre[0]
    z, a = x + 1j * y, abs(m)
    part = np.real if m >= 0 else np.imag
    dz = -a * z ** max(a - 1, 0)  # d z^a / d cx; d / d cy is i times this
    ang, ang_x, ang_y = part(z**a), part(dz), part(1j * dz)
    r2 = x * x + y * y
    b, by, bx = (np.zeros((len(x), count)) for _ in range(3))
    for k in range(count):
        rk = r2**k
        drk = k * r2 ** max(k - 1, 0)
        b[:, k] = rk * ang
        bx[:, k] = drk * (-2 * x) * ang + rk * ang_x
        by[:, k] = drk * (-2 * y) * ang + rk * ang_y
    return b, by, bx


class _Problem:
    """Scaled residuals ``(model - data) / sigma`` (N * J) of the parameters ``[cy, cx, a...]`` or ``[a...]``."""

    def __init__(self, hx, hy, data, sigma, modes, degree: int, fixed=None):
        self.hx, self.hy, self.data, self.sigma = hx, hy, data, sigma
        self.modes, self.fixed, self.degree = list(modes), fixed, degree
        self.slots, self.n_params = _slots(self.modes, degree)

    def split(self, p) -> tuple[tuple[float, float], np.ndarray]:
        return (self.fixed, p) if self.fixed is not None else ((p[0], p[1]), p[2:])

    def _blocks(self, centre):
        return [_basis(self.hx, self.hy, centre, m, c) for (_, m), (_, c) in zip(self.modes, self.slots, strict=True)]

    def design(self, centre) -> np.ndarray:
        """(N * J, P) scaled design matrix of the ``a`` at a fixed centre (rows in (bead, mode) order)."""
        n, nj = len(self.hx), len(self.modes)
        x = np.zeros((n, nj, self.n_params))
        for j, ((s, c), (b, _, _)) in enumerate(zip(self.slots, self._blocks(centre), strict=True)):
            x[:, j, s : s + c] = b
        return (x / self.sigma[:, :, None]).reshape(n * nj, -1)

    def residuals(self, p) -> np.ndarray:
        centre, a = self.split(p)
        return self.design(centre) @ a - (self.data / self.sigma).ravel()

    def jacobian(self, p) -> np.ndarray:
        centre, a = self.split(p)
        x = self.design(centre)
        if self.fixed is not None:
            return x
        n, nj = len(self.hx), len(self.modes)
        dc = np.zeros((n, nj, 2))
        for j, ((s, c), (_, by, bx)) in enumerate(zip(self.slots, self._blocks(centre), strict=True)):
            dc[:, j] = np.c_[by @ a[s : s + c], bx @ a[s : s + c]]
        return np.concatenate([(dc / self.sigma[:, :, None]).reshape(n * nj, 2), x], axis=1)

    def linear(self, centre) -> tuple[np.ndarray, float]:
        """Least-squares ``a`` at a fixed centre and its squared scaled residual."""
        x, y = self.design(centre), (self.data / self.sigma).ravel()
        a, *_ = np.linalg.lstsq(x, y, rcond=None)
        return a, float(((x @ a - y) ** 2).sum())


@dataclass
class RotationalFieldFit:
    """A rotationally symmetric field model about a fitted (or given) optical centre (module docstring).

    Attributes
    ----------
    modes : list of (n, m); degree : int, total degree of the field polynomials in (hx, hy)
    centre, centre_sigma : (cy, cx) normalised field units, the optical centre and its standard deviation
        (0 when ``centre_fixed``)
    centre_fixed : bool, the centre was given, not fitted
    parameters : (P,) float, the radial coefficients ``a_k`` (waves RMS per unit ``r^{2k} z^m``), pairs shared
    covariance : (P + 2, P + 2) float, covariance of ``(cy, cx, a...)`` (centre rows and columns 0 when fixed)
    residual_rms : (J,) float, waves RMS: robustly weighted RMS of the beads' residuals per mode
    weights : (N, J) float in (0, 1], each bead's soft-L1 weight per mode; outliers : (N,) bool, weight < 0.5
    hx, hy : (N,) float, the beads' field positions; sensor_shape : (ny, nx); wavelength_um : float
    """

    modes: list
    degree: int
    centre: tuple
    centre_sigma: tuple
    centre_fixed: bool
    parameters: np.ndarray
    covariance: np.ndarray
    residual_rms: np.ndarray
    weights: np.ndarray
    outliers: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    sensor_shape: tuple
    wavelength_um: float

    def predict(self, hx, hy) -> np.ndarray:
        """Coefficients ``(..., J)`` in waves RMS at field points ``hx, hy`` (broadcastable arrays)."""
        hx, hy = np.broadcast_arrays(np.asarray(hx, dtype=float), np.asarray(hy, dtype=float))
        slots, _ = _slots(self.modes, self.degree)
        out = np.zeros((hx.size, len(self.modes)))
        for j, ((_, m), (s, c)) in enumerate(zip(self.modes, slots, strict=True)):
            b, _, _ = _basis(hx.ravel(), hy.ravel(), self.centre, m, c)
            out[:, j] = b @ self.parameters[s : s + c]
        return out.reshape(*hx.shape, len(self.modes))

    def monomials(self) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
        """The model expanded into ``hx^p hy^q``: ``powers`` (T,), ``coefficients`` and ``uncertainty`` (J, T),
        waves RMS per unit monomial; the uncertainty propagated from :attr:`covariance`."""
        powers = monomials(self.degree)
        full = np.concatenate([np.asarray(self.centre, dtype=float), self.parameters])
        coefficients = _expand(full, self.modes, self.degree)
        grad = np.zeros((coefficients.size, full.size))
        for i in range(full.size):  # central differences: linear in a, a low-degree polynomial in the centre
            step = np.zeros(full.size)
            step[i] = 1e-4
            grad[:, i] = (_expand(full + step, self.modes, self.degree)
                          - _expand(full - step, self.modes, self.degree)).ravel() / 2e-4  # fmt: skip
        variance = np.einsum("ti,ij,tj->t", grad, self.covariance, grad).reshape(coefficients.shape)
        return powers, coefficients, np.sqrt(np.clip(variance, 0, None))

    def as_field_fit(self) -> FieldFit:
        """The expanded model as a :class:`calibration.field.FieldFit` (usable wherever one is expected)."""
        powers, coefficients, uncertainty = self.monomials()
        return FieldFit(
            modes=list(self.modes), powers=powers, coefficients=coefficients, uncertainty=uncertainty,
            residual_rms=self.residual_rms, weights=self.weights, outliers=self.outliers, hx=self.hx, hy=self.hy,
            wavelength_um=self.wavelength_um,
        )  # fmt: skip

    def field_model(self) -> FieldModel:
        """The model as a lens file's aberration model (``terms``, waves RMS, Noll numbering); monomials that the
        symmetry makes 0 for every parameter value (e.g. ``hx hy`` in defocus) are left out."""
        powers, coefficients, _ = self.monomials()
        support = _support(self.modes, self.degree)
        terms = [
            FieldTerm(nm, float(coefficients[j, t]), p, q)
            for j, nm in enumerate(self.modes)
            for t, (p, q) in enumerate(powers)
            if support[j, t]
        ]
        return FieldModel(terms=tuple(terms), unit="waves_rms", reference_wavelength_um=self.wavelength_um)

    def lens(self, nominal: Lens, *, name: str | None = None, description: str = "") -> Lens:
        """``nominal`` (optics and sensor) with the fitted aberrations, expanded into ordinary field polynomials."""
        (row, col), _ = self.centre_pixels()
        return nominal.replace(
            name=name or f"{nominal.name}-calibrated",
            description=description or (f"calibrated from beads; rotationally symmetric field polynomials of degree "
                                        f"{self.degree} about the optical centre (row {row:.1f}, column {col:.1f})"),
            aberrations=self.field_model(),
        )  # fmt: skip

    def centre_pixels(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The optical centre as sensor pixel ``(row, col)`` and its standard deviation ``(σ_row, σ_col)``, pixels."""
        row, col = field_to_pixel(self.centre[1], self.centre[0], self.sensor_shape)
        scale = field_scale(self.sensor_shape)
        return (float(row), float(col)), (self.centre_sigma[0] * scale, self.centre_sigma[1] * scale)

    def to_dict(self) -> dict:
        """JSON-ready: :meth:`calibration.field.FieldFit.to_dict` of the expansion (same keys), plus ``symmetry``,
        ``degree``, ``optical_centre`` and each mode's ``rotational`` terms with uncertainties."""
        d = self.as_field_fit().to_dict()
        (row, col), (srow, scol) = self.centre_pixels()
        slots, _ = _slots(self.modes, self.degree)
        sigma = np.sqrt(np.clip(np.diag(self.covariance)[2:], 0, None))
        support = _support(self.modes, self.degree)
        for entry, (_, m), (s, c), keep in zip(d["modes"], self.modes, slots, support, strict=True):
            entry["terms"] = [t for t, k in zip(entry["terms"], keep, strict=True) if k]
            entry["rotational"] = {
                "angular_order": m,
                "terms": [{"radius_power": 2 * k, "coefficient": float(self.parameters[s + k]),
                           "uncertainty": float(sigma[s + k])} for k in range(c)],
            }  # fmt: skip
        d.update(
            symmetry="rotational", degree=self.degree,
            optical_centre={
                "field_yx": [float(v) for v in self.centre], "field_sigma_yx": [float(v) for v in self.centre_sigma],
                "pixel_row_col": [row, col], "pixel_sigma_row_col": [float(srow), float(scol)],
                "fixed": self.centre_fixed,
            },
        )  # fmt: skip
        return d


def _support(modes, degree: int) -> np.ndarray:
    """(J, T) bool: the monomials the rotational terms can reach (non-zero at generic parameters and centre)."""
    _, n_params = _slots(modes, degree)
    generic = np.r_[0.1234, -0.2345, 1.0 + 0.1 * np.arange(n_params)]
    return np.abs(_expand(generic, modes, degree)) > 1e-9


def _expand(full: np.ndarray, modes, degree: int) -> np.ndarray:
    """(J, T) monomial coefficients (``monomials(degree)``) of the model ``full = [cy, cx, a...]``."""
    cy, cx = full[0], full[1]
    d = degree + 3  # room for r² itself; products are cut at this size, above `degree` (2k + m <= degree)
    z = np.zeros((d, d), dtype=complex)  # z[p, q]: coefficient of hx^p hy^q
    z[0, 0], z[1, 0], z[0, 1] = -cx - 1j * cy, 1.0, 1j
    r2 = np.zeros((d, d), dtype=complex)
    r2[0, 0], r2[1, 0], r2[0, 1], r2[2, 0], r2[0, 2] = cx**2 + cy**2, -2 * cx, -2 * cy, 1.0, 1.0

    def mul(a, b):
        return convolve2d(a, b)[:d, :d]

    def power(p, k):
        out = np.zeros((d, d), dtype=complex)
        out[0, 0] = 1.0
        for _ in range(k):
            out = mul(out, p)
        return out

    slots, _ = _slots(modes, degree)
    powers = monomials(degree)
    out = np.zeros((len(modes), len(powers)))
    for j, ((_, m), (s, c)) in enumerate(zip(modes, slots, strict=True)):
        angular = power(z, abs(m))
        poly = sum((full[2 + s + k] * mul(power(r2, k), angular) for k in range(c)), np.zeros((d, d), complex))
        poly = poly.real if m >= 0 else poly.imag
        out[j] = [poly[p, q] for p, q in powers]
    return out


def fit_rotational_field(
    fits: BeadFits, sensor_shape, *, centre=None, degree: int = 2, floor_waves: float = 0.005
) -> RotationalFieldFit:
    """Fit the rotationally symmetric field model of every mode and the optical centre (module docstring).

    Parameters
    ----------
    fits : BeadFits, N beads (sign-resolved for 2D images: :func:`calibration.field.resolve_signs`)
    sensor_shape : (ny, nx), the sensor the bead positions refer to, pixels
    centre : (cy, cx) or None, a fixed optical centre in normalised field units (``(0, 0)``: the sensor centre);
        None fits it
    degree : int in 1..6, total degree of the field polynomials in (hx, hy)
    floor_waves : float >= 0, waves RMS added in quadrature to every bead's uncertainty

    Returns
    -------
    RotationalFieldFit

    Raises
    ------
    ValueError
        Too few beads or too few distinct bead radii for the model, a given centre off the sensor, a fitted centre
        off the sensor or not determined by the beads (the messages suggest ``--symmetry none``).

    Examples
    --------
    >>> fit = fit_rotational_field(fits, (512, 512))                # doctest: +SKIP
    >>> (row, col), (s_row, s_col) = fit.centre_pixels()            # doctest: +SKIP
    >>> lens = fit.lens(nominal)                                    # doctest: +SKIP
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or not 1 <= degree <= 6:
        raise ValueError(f"degree: expected an integer polynomial degree in 1..6, got {degree!r}")
    if not floor_waves >= 0:
        raise ValueError(f"floor_waves: expected waves RMS >= 0, got {floor_waves!r}")
    fixed = None if centre is None else _check_centre(centre, sensor_shape, fitted=False)
    hx, hy = pixel_to_field(fits.rows, fits.cols, sensor_shape)
    _check_beads(hx, hy, fits.modes, degree, fixed)
    problem = _problem(fits, hx, hy, degree, floor_waves, fixed)
    start = fixed
    if fixed is None:  # the best of a grid of centres, each with its linear least-squares a_k
        start = min(((cy, cx) for cy in _GRID for cx in _GRID), key=lambda c: problem.linear(c)[1])
    fit = _fit(problem, fits, sensor_shape, start)
    if fixed is None:
        _check_centre(fit.centre, sensor_shape, fitted=True)
        _check_beads(hx, hy, fits.modes, degree, fit.centre, about="the fitted optical centre")
    return fit


def _problem(fits: BeadFits, hx, hy, degree: int, floor_waves: float, fixed) -> _Problem:
    sigma = np.sqrt(fits.uncertainty**2 + floor_waves**2)
    return _Problem(hx, hy, fits.coefficients, sigma, fits.modes, degree, fixed)


def _fit(problem: _Problem, fits: BeadFits, sensor_shape, start) -> RotationalFieldFit:
    """Robust fit from ``start`` (a centre), covariance from the Jacobian (module docstring)."""
    a0, _ = problem.linear(start)
    free = problem.fixed is None
    p0 = np.r_[start, a0] if free else a0
    result = least_squares(problem.residuals, p0, jac=problem.jacobian, loss="soft_l1", f_scale=1.0, method="trf",
                           x_scale="jac")  # fmt: skip
    r = result.fun
    w = 1.0 / np.sqrt(1.0 + r**2)
    jw = problem.jacobian(result.x) * np.sqrt(w)[:, None]
    if free and np.linalg.matrix_rank(jw) < jw.shape[1]:
        raise ValueError(
            "the optical centre is not determined: the beads' aberrations do not change over the field; "
            "pass a centre or use --symmetry none"
        )
    s2 = max(float((w * r**2).sum() / max(r.size - len(p0), 1)), 1.0)  # never more precise than the bead errors
    cov = np.linalg.pinv(jw.T @ jw) * s2
    full = np.zeros((problem.n_params + 2,) * 2)
    full[(0 if free else 2) :, (0 if free else 2) :] = cov
    centre, a = problem.split(result.x)
    n, nj = len(fits), len(fits.modes)
    weights = w.reshape(n, nj)
    resid = (problem.design(centre) @ a).reshape(n, nj) * problem.sigma - fits.coefficients
    sigma = np.sqrt(np.diag(full)[:2])
    return RotationalFieldFit(
        modes=list(fits.modes), degree=problem.degree,
        centre=(float(centre[0]), float(centre[1])), centre_sigma=(float(sigma[0]), float(sigma[1])),
        centre_fixed=not free, parameters=np.asarray(a, dtype=float), covariance=full,
        residual_rms=np.sqrt((weights * resid**2).sum(0) / weights.sum(0)), weights=weights,
        outliers=(weights < 0.5).any(axis=1), hx=problem.hx, hy=problem.hy,
        sensor_shape=tuple(int(v) for v in sensor_shape), wavelength_um=fits.wavelength_um,
    )  # fmt: skip


def _distinct_radii(hx, hy, centre) -> int:
    r = np.sort(np.hypot(hx - centre[1], hy - centre[0]))
    return int(1 + (np.diff(r) > _RADIUS_MERGE).sum()) if len(r) else 0


def _check_beads(hx, hy, modes, degree: int, fixed, *, about: str | None = None) -> None:
    """Enough beads and distinct radii (about ``fixed``, or the sensor centre when the centre is fitted)."""
    count = max((len(radial_powers(m, degree)) for _, m in modes), default=0)
    if count == 0:
        raise ValueError(f"degree: no fitted mode has a rotationally symmetric field term of degree <= {degree}, "
                         f"modes {list(modes)}; raise the degree")  # fmt: skip
    free = fixed is None and about is None
    need = count + 1 + (2 if free else 0)
    if len(hx) < need:
        what = f"{count} radial terms per mode" + (", the optical centre's 2 coordinates" if free else "")
        raise ValueError(
            f"a rotational field model of degree {degree} needs at least {need} beads ({what} and one more), "
            f"got {len(hx)}; image more beads or use --symmetry none"
        )
    centre = (0.0, 0.0) if fixed is None else fixed
    where = about or ("the sensor centre" if fixed is None else "the given centre")
    distinct = _distinct_radii(hx, hy, centre)
    if distinct < count + 1:
        raise ValueError(
            f"a rotational field model of degree {degree} needs beads at {count + 1} or more distinct field radii "
            f"about {where}, got {distinct} ({len(hx)} beads); spread the beads from the centre to the edge or "
            f"use --symmetry none"
        )


def _check_centre(centre, sensor_shape, *, fitted: bool) -> tuple[float, float]:
    """``(cy, cx)`` as floats; a centre off the sensor (beyond its outer pixel edges) is an error."""
    try:
        cy, cx = (float(v) for v in centre)
    except (TypeError, ValueError):
        raise ValueError(f"centre: expected (cy, cx) in normalised field units, got {centre!r}") from None
    row, col = field_to_pixel(cx, cy, sensor_shape)
    ny, nx = (int(v) for v in sensor_shape)
    if np.isfinite([cy, cx]).all() and -0.5 <= row <= ny - 0.5 and -0.5 <= col <= nx - 0.5:
        return cy, cx
    where = f"(cy {cy:.3f}, cx {cx:.3f}: row {float(row):.1f}, column {float(col):.1f})"
    if fitted:
        raise ValueError(
            f"the fitted optical centre {where} lies outside the {ny}x{nx} sensor: the beads' aberrations do not "
            f"look rotationally symmetric; use --symmetry none"
        )
    raise ValueError(f"centre: expected an optical centre on the {ny}x{nx} sensor, got {where}")


RULE = (
    "k-fold cross-validation over the beads: each fold's Zernike coefficients predicted by each model fitted to the "
    "other beads; per bead the error sqrt(Σ_j Δc_j²) in waves RMS; 'none' is chosen only when its mean error is "
    "lower than the rotational model's by more than one standard error of the paired per-bead difference"
)


def choose_symmetry(
    fits: BeadFits, sensor_shape, *, folds: int = 5, seed: int = 0, degree: int = 2, floor_waves: float = 0.005
) -> tuple[str, dict]:
    """Choose between ``'none'`` (:func:`calibration.field.fit_field`) and ``'rotational'``
    (:func:`fit_rotational_field`) by cross-validated prediction of held-out beads (:data:`RULE`).

    Parameters
    ----------
    fits : BeadFits (sign-resolved); sensor_shape : (ny, nx) pixels
    folds : int >= 2, cross-validation folds (at most one per bead); seed : int, the random split's seed
    degree : int, total degree of both models' field polynomials; floor_waves : float, as for the fits

    Returns
    -------
    choice : 'none' or 'rotational'
    report : dict, JSON-ready: ``choice``, ``reason`` (words), ``rule``, ``folds``, ``beads``, ``degree``,
        ``cross_validated_error_waves_rms`` ({'none', 'rotational'}: mean per-bead error, or None where that model
        could not be fitted), ``difference_waves_rms`` (rotational - none) and ``standard_error_waves_rms``,
        ``optical_centre`` (of the rotational fit to every bead; absent when it failed)
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    n = len(fits)
    folds = min(folds, n)
    report = {"rule": RULE, "folds": folds, "beads": n, "degree": degree,
              "cross_validated_error_waves_rms": {"none": None, "rotational": None}}  # fmt: skip
    try:
        whole = fit_rotational_field(fits, sensor_shape, degree=degree, floor_waves=floor_waves)
    except ValueError as err:
        return "none", {**report, "choice": "none", "reason": f"no rotational model: {str(err).split('; use')[0]}"}
    report["optical_centre"] = whole.to_dict()["optical_centre"]
    order = np.random.default_rng(seed).permutation(n)
    parts = [order[k::folds] for k in range(folds)]
    errors, failed = {}, {}
    for kind in ("none", "rotational"):
        try:
            errors[kind] = _cv_errors(fits, sensor_shape, kind, parts, degree, floor_waves, whole.centre)
            report["cross_validated_error_waves_rms"][kind] = float(errors[kind].mean())
        except ValueError as err:
            failed[kind] = str(err)
    if failed:
        reason = "; ".join(f"{k} cannot be cross-validated ({why})" for k, why in failed.items())
        choice = "none" if "rotational" in failed and "none" not in failed else "rotational"
        return choice, {**report, "choice": choice, "reason": f"{reason}: {choice} kept"}
    d = errors["rotational"] - errors["none"]
    diff, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    choice = "none" if diff > se else "rotational"
    verdict = ("'none' predicts better by more than one standard error" if choice == "none" else
               "'none' is not better by more than one standard error, so the symmetric model (fewer parameters) "
               "is kept")  # fmt: skip
    reason = (f"cross-validated error {errors['rotational'].mean():.4f} (rotational) against "
              f"{errors['none'].mean():.4f} (none) waves RMS per bead, difference {diff:+.4f} ± {se:.4f}: "
              f"{verdict}")  # fmt: skip
    report.update(difference_waves_rms=diff, standard_error_waves_rms=se)
    return choice, {**report, "choice": choice, "reason": reason}


def _cv_errors(fits: BeadFits, sensor_shape, kind: str, parts, degree: int, floor_waves: float, centre) -> np.ndarray:
    """(N,) per-bead error of the coefficients predicted by ``kind`` fitted without the bead's fold, waves RMS.
    The rotational folds refit the centre from ``centre`` without the grid search or the off-sensor check."""
    errors = np.zeros(len(fits))
    for test in parts:
        train = fits.subset(np.setdiff1d(np.arange(len(fits)), test))
        held = fits.subset(test)
        hx, hy = pixel_to_field(held.rows, held.cols, sensor_shape)
        if kind == "none":
            model = fit_field(train, sensor_shape, degree=degree, floor_waves=floor_waves)
        else:
            thx, thy = pixel_to_field(train.rows, train.cols, sensor_shape)
            _check_beads(thx, thy, train.modes, degree, None)
            model = _fit(_problem(train, thx, thy, degree, floor_waves, None), train, sensor_shape, centre)
        errors[test] = held.rms_error(model.predict(hx, hy))
    return errors
