"""Rotationally symmetric PSF fields: one measured PSF constrains every azimuth at its radius.

Most instruments are rotationally symmetric about an optical axis (lenses, relays, multimode fibres): the PSF at
polar field position ``(r, θ)`` about the optical centre ``c`` is the PSF at ``(r, 0)`` rotated by ``θ``,

    ``PSF(c + r (cos θ, sin θ)) = R_θ [ PSF_frame(r) ]``,

where ``PSF_frame(r)`` is the PSF on the ray from the centre along +x (the *rotating frame*). A bead measured at
``(r_i, θ_i)``, de-rotated by ``-θ_i``, is a sample of ``PSF_frame(r_i)``, so sparse beads at a few azimuths
constrain the whole ring (Kohli et al., "Ring deconvolution microscopy", Nat. Methods 2025, build a method on this).

Conventions
-----------
* Field coordinates are the normalised ``(hx, hy)`` of :mod:`optisim.field` (``hy`` grows with the row index); the
  optical centre ``(cy, cx)`` is in the same units. ``θ = atan2(hy - cy, hx - cx)`` is measured from +x toward +y
  (toward increasing rows: clockwise as an image is displayed).
* ``R_θ`` maps a kernel feature at pixel offset ``(dy, dx) = (0, 1)`` from the chief ray to
  ``(sin θ, cos θ)``: ``R_θ k (dy, dx) = k(-sin θ dx + cos θ dy, cos θ dx + sin θ dy)``, by cubic-spline
  interpolation about the kernel's centre pixel ``(kh // 2, kw // 2)``; values pushed in from outside the window
  are 0.
* Kernels are ``(k, y, x)`` arrays on the sensor's pixel grid; PSFs sum to 1 over ``(y, x)``.

Model
-----
The de-rotated PSFs ``q_i`` are factored by SVD into K eigen-PSFs of the rotating frame ``e_k`` (unit L2 norm);
each coefficient ``c_k(r)`` is a cubic smoothing spline in ``r`` with its smoothing chosen by generalised
cross-validation (:func:`scipy.interpolate.make_smoothing_spline`). Inside the innermost bead radius the coefficients
are held at their value there (the PSF near the axis changes slowly: ``dc/dr = 0`` at ``r = 0`` by symmetry);
past the outermost bead radius they continue along the spline's end tangent (linear extrapolation: a guess, which
the coverage map of the calibration flags). An optional non-symmetric part (an ordinary empirical model,
:func:`optisim.psfmodel.eigen_psfs_from_samples`, of the residuals) adds what the symmetry does not explain.

Every consumer of PSF fields (the blur operator, datasets, training, deblurring) takes an
:class:`optisim.lowrank.EigenPSFs`; :meth:`RotationalPSFs.to_eigen_psfs` samples the symmetric field on a regular
field grid and factors it, so a rotational model is used like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_smoothing_spline
from scipy.ndimage import map_coordinates, spline_filter
from scipy.optimize import minimize

from optisim.field import field_grid
from optisim.lowrank import DEFAULT_TOL, EigenPSFs, rank_for_tolerance

__all__ = [
    "MIN_RADII",
    "RotationalPSFs",
    "fit_optical_centre",
    "polar_field",
    "rotate_psfs",
    "rotational_psfs_from_samples",
]

MIN_RADII = 5  # distinct bead radii a rotational model needs (a cubic smoothing spline in r)
_RADIUS_MERGE = 1e-4  # normalised field: beads closer in radius than this count as one radius


def polar_field(hx, hy, centre) -> tuple[np.ndarray, np.ndarray]:
    """Polar coordinates ``(r, θ)`` of normalised field points about the optical centre ``(cy, cx)``.

    Returns
    -------
    r : float array, normalised field units; theta : float array, radians in (-π, π] (module conventions)
    """
    cy, cx = (float(v) for v in centre)
    dx, dy = np.asarray(hx, dtype=float) - cx, np.asarray(hy, dtype=float) - cy
    return np.hypot(dx, dy), np.arctan2(dy, dx)


def _check_psfs(psfs) -> np.ndarray:
    p = np.asarray(psfs, dtype=np.float64)
    if p.ndim != 3 or p.shape[1] != p.shape[2] or p.shape[1] % 2 == 0:
        raise ValueError(f"psfs: expected (N, w, w) windows of odd side w (chief ray at the centre), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("psfs: contains NaN or Inf values")
    return p


def rotate_psfs(psfs, angles, *, prefiltered: bool = False) -> np.ndarray:
    """Rotate each kernel by its angle about its centre pixel: ``R_θ`` of the module docstring.

    Parameters
    ----------
    psfs : (N, w, w) float array, odd ``w``, axes (kernel, y, x). With ``prefiltered`` the cubic-spline
        coefficients of the kernels (:func:`scipy.ndimage.spline_filter`, ``mode='constant'``), which saves the
        prefilter when the same kernels are rotated many times.
    angles : (N,) float array or scalar, radians

    Returns
    -------
    (N, w, w) float64 array: the rotated kernels (not renormalised; interpolation may leave small negative values)
    """
    p = _check_psfs(psfs)
    n, w, _ = p.shape
    a = np.broadcast_to(np.asarray(angles, dtype=float), (n,))
    c = w // 2
    dy, dx = np.mgrid[0:w, 0:w].astype(float) - c
    cos, sin = np.cos(a)[:, None, None], np.sin(a)[:, None, None]
    src_y, src_x = c - sin * dx + cos * dy, c + cos * dx + sin * dy
    out = np.empty_like(p)
    for i in range(n):
        out[i] = map_coordinates(
            p[i], [src_y[i], src_x[i]], order=3, mode="constant", cval=0.0, prefilter=not prefiltered
        )
    return out


def _prefilter(p: np.ndarray) -> np.ndarray:
    return np.stack([spline_filter(k, order=3, mode="constant") for k in p])


def _normalised(p: np.ndarray) -> np.ndarray:
    p = p.clip(min=0)
    return p / np.maximum(p.sum(axis=(1, 2), keepdims=True), 1e-300)


@dataclass(frozen=True, eq=False)
class RotationalPSFs:
    """A rotationally symmetric PSF field about an optical centre (module docstring), with an optional
    non-symmetric part.

    Attributes
    ----------
    kernels : (K, w, w) float64, eigen-PSFs of the rotating frame (unit L2 norm), chief ray at the centre pixel
    radii : (R,) float64, the distinct bead radii the coefficient splines were fitted at (normalised field units)
    splines : list of K callables ``r -> c_k(r)`` (smoothing splines, :func:`scipy.interpolate.make_smoothing_spline`)
    centre : (cy, cx) floats, the optical centre in normalised field units
    sensor_shape : (ny, nx) pixels
    singular_values : all singular values of the de-rotated PSF matrix
    asymmetric : EigenPSFs or None, the non-symmetric part (a residual PSF field, summing to about 0)
    """

    kernels: np.ndarray
    radii: np.ndarray
    splines: list
    centre: tuple[float, float]
    sensor_shape: tuple[int, int]
    singular_values: np.ndarray
    asymmetric: EigenPSFs | None = None

    @property
    def rank(self) -> int:
        return int(self.kernels.shape[0])

    def coefficients(self, r) -> np.ndarray:
        """(n, K) coefficients of the rotating-frame eigen-PSFs at radii ``r`` (held inside, linear outside)."""
        r = np.atleast_1d(np.asarray(r, dtype=float))
        lo, hi = float(self.radii[0]), float(self.radii[-1])
        inner = np.clip(r, lo, hi)
        out = np.stack([s(inner) for s in self.splines], axis=-1)
        beyond = r > hi
        if beyond.any():
            slope = np.array([s.derivative()(hi) for s in self.splines])
            out[beyond] += (r[beyond] - hi)[:, None] * slope[None, :]
        return out

    def frame_psfs(self, r) -> np.ndarray:
        """(n, w, w) PSFs of the rotating frame at radii ``r`` (azimuth 0), clipped at 0 and summing to 1."""
        return _normalised(np.einsum("nk,kyx->nyx", self.coefficients(r), self.kernels))

    def psfs_at(self, hx, hy) -> np.ndarray:
        """(n, w, w) PSFs at normalised field points: the frame PSF at ``r`` rotated by ``θ`` (+ the non-symmetric
        part), clipped at 0 and summing to 1."""
        hx, hy = np.broadcast_arrays(np.atleast_1d(np.asarray(hx, float)), np.atleast_1d(np.asarray(hy, float)))
        r, theta = polar_field(hx.ravel(), hy.ravel(), self.centre)
        p = rotate_psfs(self.frame_psfs(r), theta)
        if self.asymmetric is not None:
            p = p + self.asymmetric.psfs_at(hx.ravel(), hy.ravel())
        return _normalised(p)

    def to_eigen_psfs(self, *, grid=(25, 25), rank: int | None = None, tol: float = DEFAULT_TOL) -> EigenPSFs:
        """Sample the field on a regular ``grid`` (:func:`optisim.field.field_grid`) and factor it into the
        low-rank model every optisim operator takes (:class:`optisim.lowrank.EigenPSFs`).

        Rotating PSFs need more eigen-PSFs than a field that only changes shape; ``tol`` (relative Frobenius error
        over the grid) or ``rank`` sets the trade between fidelity and the blur's cost (one convolution per rank).
        """
        gy, gx = (int(g) for g in grid)
        if gy < 4 or gx < 4:
            raise ValueError(f"grid: bicubic weight maps need at least 4x4 field points, got {gy}x{gx}")
        fy, fx = field_grid(self.sensor_shape, (gy, gx))
        yy, xx = np.meshgrid(fy, fx, indexing="ij")
        p = self.psfs_at(xx.ravel(), yy.ravel())
        w = p.shape[-1]
        _, s, vt = np.linalg.svd(p.reshape(gy * gx, w * w), full_matrices=False)
        k = rank_for_tolerance(s, tol) if rank is None else int(rank)
        if not 1 <= k <= len(s):
            raise ValueError(f"rank: expected 1..{len(s)}, got {rank}")
        kernels = vt[:k]
        coefficients = (p.reshape(gy * gx, w * w) @ kernels.T).reshape(gy, gx, k)
        return EigenPSFs(
            kernels=kernels.reshape(k, w, w).astype(np.float32), coefficients=coefficients, field_y=fy, field_x=fx,
            sensor_shape=tuple(int(v) for v in self.sensor_shape), singular_values=s,
        )  # fmt: skip

    def to_dict(self) -> dict:
        """JSON-ready summary: centre, rank, radii covered, non-symmetric rank."""
        return {
            "centre_field": [float(v) for v in self.centre],
            "rank": self.rank,
            "bead_radius_range": [float(self.radii[0]), float(self.radii[-1])],
            "asymmetric_rank": 0 if self.asymmetric is None else self.asymmetric.rank,
        }


def _distinct_radii(r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by radius and average the coefficients of beads at (nearly) the same radius; returns radii, mean
    coefficients and the number of beads behind each."""
    order = np.argsort(r)
    r, c = r[order], c[order]
    groups = np.concatenate([[0], np.cumsum(np.diff(r) > _RADIUS_MERGE)])
    counts = np.bincount(groups).astype(float)
    radii = np.bincount(groups, weights=r) / counts
    means = np.stack([np.bincount(groups, weights=c[:, k]) / counts for k in range(c.shape[1])], axis=-1)
    return radii, means, counts


def rotational_psfs_from_samples(
    psfs, hy, hx, sensor_shape, *, centre, rank: int = 3, asymmetric_rank: int = 0, smoothing=None
) -> RotationalPSFs:
    """A rotationally symmetric PSF field from PSFs measured at scattered field points (module docstring).

    Parameters
    ----------
    psfs : (N, w, w) float array, measured PSFs, background removed, each centred on its chief ray (the bead's
        position) at pixel ``(w // 2, w // 2)``; normalised to sum 1 here
    hy, hx : (N,) float arrays, normalised field coordinates of the beads
    sensor_shape : (ny, nx) pixels
    centre : (cy, cx) floats, the optical centre (normalised field; :func:`fit_optical_centre` fits it)
    rank : int, K eigen-PSFs of the rotating frame
    asymmetric_rank : int >= 0, eigen-PSFs of the non-symmetric residual part (0: none)
    smoothing : float or None, the splines' ``lam`` (None: generalised cross-validation per coefficient)

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_RADII` distinct bead radii (the symmetric model cannot be fitted: use a model without
        symmetry), a rank out of range, or bad arrays.
    """
    p = _normalised(_check_psfs(psfs))
    n, w, _ = p.shape
    hy, hx = np.asarray(hy, dtype=float), np.asarray(hx, dtype=float)
    if hy.shape != (n,) or hx.shape != (n,):
        raise ValueError(f"hy, hx: expected one field point per PSF, shapes ({n},), got {hy.shape} and {hx.shape}")
    r, theta = polar_field(hx, hy, centre)
    distinct = len(_distinct_radii(r, np.zeros((n, 1)))[0])
    if distinct < MIN_RADII:
        raise ValueError(
            f"a rotationally symmetric model needs beads at {MIN_RADII} or more distinct field radii, got {distinct}; "
            "spread the beads from the centre to the edge or use --symmetry none"
        )
    if isinstance(rank, bool) or not 1 <= int(rank) <= min(n, w * w):
        raise ValueError(f"rank: expected 1..{min(n, w * w)}, got {rank}")
    q = _normalised(rotate_psfs(p, -theta))
    _, s, vt = np.linalg.svd(q.reshape(n, w * w), full_matrices=False)
    kernels = vt[: int(rank)]
    coeffs = q.reshape(n, w * w) @ kernels.T
    radii, means, counts = _distinct_radii(r, coeffs)
    splines = [make_smoothing_spline(radii, means[:, k], w=counts, lam=smoothing) for k in range(int(rank))]
    model = RotationalPSFs(
        kernels=kernels.reshape(-1, w, w), radii=radii, splines=splines, centre=(float(centre[0]), float(centre[1])),
        sensor_shape=tuple(int(v) for v in sensor_shape), singular_values=s,
    )  # fmt: skip
    if asymmetric_rank:
        from optisim.psfmodel import eigen_psfs_from_samples

        residual = p - model.psfs_at(hx, hy)
        shift = residual.sum(axis=(1, 2), keepdims=True) / (w * w)  # the residuals sum to 0: add a flat pedestal
        part = eigen_psfs_from_samples(residual - shift + 1.0 / (w * w), hy, hx, sensor_shape, rank=asymmetric_rank)
        flat = np.full((1, w, w), 1.0 / (w * w))
        model = _with_asymmetric(model, part, flat)
    return model


def _with_asymmetric(model: RotationalPSFs, part: EigenPSFs, flat: np.ndarray) -> RotationalPSFs:
    """Attach a residual model fitted to ``residual + flat`` (so each sample summed to 1): subtract the flat part's
    projection from the coefficients, leaving a field that sums to about 0."""
    kernels = part.kernels.astype(np.float64)
    flat_c = np.einsum("kyx,yx->k", kernels, flat[0])
    residual = EigenPSFs(
        kernels=part.kernels, coefficients=part.coefficients - flat_c, field_y=part.field_y, field_x=part.field_x,
        sensor_shape=part.sensor_shape, singular_values=part.singular_values,
    )  # fmt: skip
    return RotationalPSFs(**{**model.__dict__, "asymmetric": residual})


def _centre_cost(prefiltered: np.ndarray, hy, hx, centre, bandwidth: float) -> float:
    """Leave-one-out prediction error of the de-rotated PSFs about ``centre``: each bead's frame PSF predicted by
    a Gaussian-weighted (in radius) mean of the other beads' frame PSFs, relative squared error summed."""
    r, theta = polar_field(hx, hy, centre)
    q = _normalised(rotate_psfs(prefiltered, -theta, prefiltered=True))
    weights = np.exp(-0.5 * ((r[:, None] - r[None, :]) / bandwidth) ** 2)
    np.fill_diagonal(weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    ok = total[:, 0] > 1e-3
    predicted = np.einsum("ij,jyx->iyx", weights / np.maximum(total, 1e-300), q)
    err = ((predicted - q) ** 2).sum(axis=(1, 2)) / (q**2).sum(axis=(1, 2))
    return float(err[ok].mean()) if ok.any() else float("inf")


def fit_optical_centre(
    psfs, hy, hx, sensor_shape, *, start=(0.0, 0.0), search: float = 0.5, bootstrap: int = 16, seed: int = 0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The optical centre that makes the measured PSFs most rotationally consistent, with its uncertainty.

    For a trial centre every PSF is de-rotated into the rotating frame, and each bead's frame PSF is predicted from
    the other beads at similar radii (Gaussian weights in ``r``, bandwidth twice the median gap between the sorted
    bead radii, at least 0.03); the centre minimises the mean relative squared prediction error. A coarse 9x9 grid
    search over ``start ± search`` (normalised field units) is refined by Nelder-Mead; the uncertainty is the
    standard deviation of the centres refitted to ``bootstrap`` resamplings of the beads (from the best centre).

    Parameters
    ----------
    psfs : (N, w, w) measured centred PSFs (as for :func:`rotational_psfs_from_samples`)
    hy, hx : (N,) normalised field coordinates; sensor_shape : (ny, nx)
    start : (cy, cx) initial centre; search : half-width of the grid search
    bootstrap : resamplings for the uncertainty (0: none, the uncertainty is NaN); seed : their random seed

    Returns
    -------
    centre : (cy, cx) normalised field units; sigma : (σy, σx) their bootstrap standard deviations
    """
    p = _normalised(_check_psfs(psfs))
    hy, hx = np.asarray(hy, dtype=float), np.asarray(hx, dtype=float)
    if len(p) < MIN_RADII + 1:
        raise ValueError(
            f"fitting the optical centre needs at least {MIN_RADII + 1} beads, got {len(p)}; use --symmetry none"
        )
    pre = _prefilter(p)

    def solve(idx, x0, span):
        r0 = np.sort(np.hypot(hx[idx] - x0[1], hy[idx] - x0[0]))
        bandwidth = max(0.03, 2.0 * float(np.median(np.diff(r0))))

        def cost(c):
            return _centre_cost(pre[idx], hy[idx], hx[idx], c, bandwidth)

        if span > 0:
            offsets = np.linspace(-span, span, 9)
            trials = [(x0[0] + a, x0[1] + b) for a in offsets for b in offsets]
            x0 = trials[int(np.argmin([cost(c) for c in trials]))]
        res = minimize(cost, np.asarray(x0, float), method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-9, "initial_simplex": _simplex(x0, 0.04)})  # fmt: skip
        return tuple(float(v) for v in res.x)

    everyone = np.arange(len(p))
    best = solve(everyone, tuple(float(v) for v in start), float(search))
    if bootstrap <= 0:
        return best, (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = np.array([solve(rng.choice(everyone, size=len(p), replace=True), best, 0.0) for _ in range(bootstrap)])
    sigma = draws.std(axis=0, ddof=1)
    return best, (float(sigma[0]), float(sigma[1]))


def _simplex(x0, step: float) -> np.ndarray:
    x0 = np.asarray(x0, dtype=float)
    return x0 + np.array([[0.0, 0.0], [step, 0.0], [0.0, step]])
