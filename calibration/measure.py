"""Measurements on images of sub-resolution fluorescent beads: background, noise, PSF width, crops.

Conventions
-----------
Images are ``(Y, X)`` arrays and z-stacks ``(Z, Y, X)`` arrays (rows ``y``, columns ``x``, plane index ``z``).
Positions are ``(y, x)`` in pixels with a pixel's centre at integer coordinates, given as an ``(N, 2)`` array or as
:class:`calibration.detect.Bead` objects. Values stay in the image's own units (counts, ADU); all arithmetic is
float64.

Contents
--------
* :func:`estimate_background`: smooth background map (sigma-clipped tile medians, median filter, cubic spline).
* :func:`estimate_noise`: robust (MAD-based, outliers clipped) noise sigma, at least the rounding noise.
* :func:`bead_fwhm`: FWHM of each bead (pixels) from a least-squares elliptical 2D Gaussian fit.
* :func:`estimate_psf_sigma`: PSF Gaussian sigma (pixels) from the brightest isolated peaks of an image.
* :func:`extract_crops`: square crops around beads, all planes.

They are the building blocks of :func:`calibration.detect.detect_beads`, which also uses the private peak helpers
here (local maxima, nearest neighbours, border and saturation checks) and the input checks.

Nothing is random: the same image and settings give the same results.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import interpolate, ndimage, optimize, spatial
from skimage.feature import peak_local_max

__all__ = [
    "FWHM_PER_SIGMA",
    "bead_fwhm",
    "estimate_background",
    "estimate_noise",
    "estimate_psf_sigma",
    "extract_crops",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548: FWHM of a Gaussian in units of its sigma
_MAD_TO_SIGMA = 1.482602218505602  # sigma of a normal distribution per median absolute deviation


def _integer(name: str, value, *, low: int, odd: bool = False, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if not ok or (odd and value % 2 == 0):
        what = f"{'None or ' if optional else ''}{'an odd' if odd else 'an'} integer >= {low}"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def _default_window(sigma_px: float) -> int:
    """Odd crop side >= 8 sigma and >= 15 pixels."""
    side = math.ceil(8.0 * sigma_px)
    return max(15, side + (side % 2 == 0))


def _as_stack(stack, name: str = "stack") -> tuple[np.ndarray, bool]:
    """``(Z, Y, X)`` float64 copy of a 2D image or a 3D stack, and whether it was a stack."""
    a = np.asarray(stack)
    if a.ndim not in (2, 3) or a.shape[-1] < 5 or a.shape[-2] < 5 or a.shape[0] < 1:
        raise ValueError(f"{name}: expected a (Y, X) image or a (Z, Y, X) stack of at least 5x5 pixels, got {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    data = a.astype(np.float64)
    bad = data.size - np.count_nonzero(np.isfinite(data))
    if bad:
        raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite pixels")
    return (data if a.ndim == 3 else data[None]), a.ndim == 3


def _as_image2d(image2d, name: str = "image2d") -> np.ndarray:
    if np.ndim(image2d) != 2:
        raise ValueError(f"{name}: expected a (Y, X) image, got shape {np.shape(image2d)}")
    return _as_stack(image2d, name)[0][0]


def _positions(beads) -> tuple[np.ndarray, list[int]]:
    """``(N, 2)`` float (y, x) of Beads or of an (N, 2) array, and the labels to quote in messages."""
    from calibration.detect import Bead  # here, not at the top: calibration.detect imports this module

    items = list(beads)
    if items and all(isinstance(b, Bead) for b in items):
        return np.array([[b.y, b.x] for b in items], float), [b.index for b in items]
    pos = np.asarray(items, float) if items else np.zeros((0, 2))
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"beads: expected a list of Bead or an (N, 2) array of (y, x) pixels, got shape {pos.shape}")
    return pos, list(range(len(pos)))


def _take(v: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(v, np.clip(idx, 0, v.shape[-1] - 1)[..., None], axis=-1)[..., 0]


def _clipped_median(values: np.ndarray, *, clip: float = 3.0, n_iter: int = 3) -> np.ndarray:
    """Median over the last axis after clipping, ``n_iter`` times, values over ``clip`` sigmas from it.

    The sigma is half the 16-84 % spread of the values kept; kept values form a run of the sorted array.
    """
    v = np.sort(values, axis=-1)
    lo, hi = np.zeros(v.shape[:-1], int), np.full(v.shape[:-1], v.shape[-1])

    def quantile(f):
        return _take(v, lo + np.rint(f * (hi - lo - 1)).astype(int))

    for _ in range(n_iter):
        med, half = quantile(0.5), clip * 0.5 * (quantile(0.8413) - quantile(0.1587))
        new_lo = np.sum(v < (med - half)[..., None], axis=-1)
        new_hi = np.sum(v <= (med + half)[..., None], axis=-1)
        ok = new_hi > new_lo
        lo, hi = np.where(ok, new_lo, lo), np.where(ok, new_hi, hi)
    return 0.5 * (_take(v, lo + (hi - lo - 1) // 2) + _take(v, lo + (hi - lo) // 2))


def estimate_background(image2d, *, size: int) -> np.ndarray:
    """Smooth background map of an image with bright compact objects (beads) on it.

    Parameters
    ----------
    image2d : (Y, X) array, image units
    size : int, pixels
        Scale of the background: tiles of side ``max(4, size // 4)`` give sigma-clipped medians, a 3 x 3 median
        filter over the tiles (around a fitted plane) removes tiles covered by beads, and a cubic spline through
        the tile centres returns to the pixel grid (continued along the plane beyond the outermost centres).
        Objects much smaller than ``size`` (``4 * window`` in :func:`~calibration.detect.detect_beads`) do not enter
        the map.

    Returns
    -------
    (Y, X) float64 array, image units
    """
    image = _as_image2d(image2d)
    side = max(4, _integer("size", size, low=4) // 4)
    index, centres = [], []
    for n in image.shape:  # whole tiles spread evenly over [0, n), the last ones overlapping a little
        t = min(side, n)
        starts = np.rint(np.linspace(0, n - t, max(1, round(n / t)))).astype(int)
        index.append(starts[:, None] + np.arange(t))
        centres.append(starts + (t - 1) / 2.0)
    (iy, ix), (cy, cx) = index, centres
    grid = _clipped_median(image[iy[:, None, :, None], ix[None, :, None, :]].reshape(len(cy), len(cx), -1))
    # the median filter works on deviations from a plane through the tiles (so that a slope does not bias the
    # edges), and beyond the outermost tile centres the map follows that plane
    gy, gx = np.meshgrid(cy - cy.mean(), cx - cx.mean(), indexing="ij")
    design = np.stack([np.ones(grid.size), gy.ravel(), gx.ravel()], axis=1)
    coef = np.linalg.lstsq(design, grid.ravel(), rcond=None)[0]
    trend = (design @ coef).reshape(grid.shape)
    grid = ndimage.median_filter(grid - trend, size=3, mode="nearest") + trend
    grid = np.repeat(np.repeat(grid, 2 if len(cy) == 1 else 1, axis=0), 2 if len(cx) == 1 else 1, axis=1)
    knots = [c if len(c) > 1 else np.array([c[0], c[0] + 1.0]) for c in (cy, cx)]
    spline = interpolate.RectBivariateSpline(*knots, grid, kx=min(3, len(knots[0]) - 1), ky=min(3, len(knots[1]) - 1))
    py, px = np.arange(image.shape[0]), np.arange(image.shape[1])
    qy, qx = np.clip(py, cy[0], cy[-1]), np.clip(px, cx[0], cx[-1])
    return spline(qy, qx) + coef[1] * (py - qy)[:, None] + coef[2] * (px - qx)[None, :]


def estimate_noise(residual2d, *, quantum: float = 0.0) -> float:
    """Robust noise sigma of a background-subtracted image (any shape), image units.

    The MAD-based sigma, re-estimated twice after clipping values over 4 sigma from the median (beads). Where most
    values are equal (sparse, quantised data), the MAD is 0: then the RMS deviation of the values within three
    quantisation steps of the median. The result is at least ``quantum / sqrt(12)``, the rounding noise of a
    detector that counts in steps of ``quantum`` (1 for integer images), and never 0 (a floor of ``1e-12`` of the
    largest magnitude, at least ``1e-300``), so that ratios stay finite.
    """
    r = np.asarray(residual2d, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise ValueError("residual2d: expected at least one finite value, got none")
    if r.size > 2**18:
        r = r[:: -(-r.size // 2**18)]  # a deterministic subsample of at most 2**18 values is plenty for a sigma
    keep, spread = r, float(np.subtract(*np.quantile(r, [0.99, 0.01])))
    for _ in range(3):
        med = np.median(keep)
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(keep - med)))
        if sigma <= 1e-6 * spread:
            dev = np.abs(r - np.median(r))
            steps = dev[dev > 1e-6 * spread]
            sigma = math.sqrt(float(np.mean(np.square(dev[dev <= 3.0 * steps.min()])))) if steps.size else 0.0
            break
        keep = r[np.abs(r - med) <= 4.0 * sigma]
    return float(max(sigma, quantum / math.sqrt(12.0), 1e-12 * float(np.max(np.abs(r))), 1e-300))


def _find_peaks(image: np.ndarray, level: float, min_distance: int) -> np.ndarray:
    """(N, 2) int local maxima above ``level``, brightest first."""
    coords = peak_local_max(image, min_distance=min_distance, threshold_abs=level, exclude_border=False)
    return coords[np.argsort(-image[coords[:, 0], coords[:, 1]], kind="stable")]


def _neighbours(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, each position's nearest other position (inf, -1 when alone)."""
    if len(pos) < 2:
        return np.full(len(pos), np.inf), np.full(len(pos), -1)
    dist, idx = spatial.cKDTree(pos).query(pos, k=2)
    return dist[:, 1], idx[:, 1]


def _border_and_saturation(pos, data, window, saturation) -> tuple[np.ndarray, np.ndarray]:
    """Whether each bead's window leaves the image, and its count of saturated pixels within ``window // 2``."""
    half, (n_y, n_x) = window // 2, data.shape[-2:]
    r = np.rint(pos).astype(int)
    cut = (r[:, 0] < half) | (r[:, 0] > n_y - 1 - half) | (r[:, 1] < half) | (r[:, 1] > n_x - 1 - half)
    counts = np.zeros(len(pos), int)
    if saturation is not None:
        for i, (ry, rx) in enumerate(r):
            sy = slice(max(0, ry - half), min(n_y, ry + half + 1))
            sx = slice(max(0, rx - half), min(n_x, rx + half + 1))
            yy, xx = np.ogrid[sy, sx]
            disk = (yy - pos[i, 0]) ** 2 + (xx - pos[i, 1]) ** 2 <= half**2
            counts[i] = np.count_nonzero((data[:, sy, sx] >= saturation) & disk)
    return cut, counts


def _fit_gaussian(patch: np.ndarray) -> np.ndarray | None:
    """FWHM (major, minor, geometric mean) of an elliptical Gaussian + constant fitted to ``patch``; None if failed."""
    yy, xx = np.indices(patch.shape, dtype=float)
    c0 = float(np.median(np.concatenate([patch[0], patch[-1], patch[:, 0], patch[:, -1]])))
    w = patch - c0
    amp = float(w.max())
    if not amp > 0:
        return None
    w = np.where(w > 0.2 * amp, w, 0.0)  # moments of the core; a Gaussian cut at 20 % has 0.6 of its variance
    cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
    dy, dx = yy - cy, xx - cx
    cov = np.array([[(w * dy * dy).sum(), (w * dy * dx).sum()], [(w * dy * dx).sum(), (w * dx * dx).sum()]])
    chol = np.linalg.cholesky(np.linalg.inv(cov / w.sum() / 0.6 + 0.05 * np.eye(2)))

    def residual(p):  # p = A, y0, x0, log L00, L10, log L11, c with inverse covariance L L^T
        u = np.exp(p[3]) * (yy - p[1]) + p[4] * (xx - p[2])
        v = np.exp(p[5]) * (xx - p[2])
        return (p[0] * np.exp(-0.5 * (u * u + v * v)) + p[6] - patch).ravel()

    p0 = [amp, cy, cx, math.log(chol[0, 0]), chol[1, 0], math.log(chol[1, 1]), c0]
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            fit = optimize.least_squares(residual, p0, method="lm", x_scale="jac", max_nfev=800)
    except (ValueError, np.linalg.LinAlgError):
        return None
    p = fit.x
    inside = 0 <= p[1] <= patch.shape[0] - 1 and 0 <= p[2] <= patch.shape[1] - 1
    if not (fit.success and np.all(np.isfinite(p)) and p[0] > 0 and inside and max(abs(p[3]), abs(p[5])) < 20):
        return None
    lower = np.array([[math.exp(p[3]), 0.0], [p[4], math.exp(p[5])]])
    eig = np.linalg.eigvalsh(lower @ lower.T)  # inverse variances along the principal axes, ascending
    major, minor = FWHM_PER_SIGMA / np.sqrt(np.maximum(eig, 1e-300))
    return np.array([major, minor, math.sqrt(major * minor)]) if major < max(patch.shape) else None


def bead_fwhm(image2d, beads_or_positions, *, window: int, background=None) -> np.ndarray:
    """FWHM of each bead from a least-squares elliptical 2D Gaussian fit with a constant background.

    Parameters
    ----------
    image2d : (Y, X) array, image units
    beads_or_positions : list of Bead or (N, 2) array of (y, x), pixels
    window : odd int, pixels
        Side of the square fitted around each rounded position (clipped at the image border).
    background : None, float or (Y, X) array, image units
        Subtracted before the fit (the fit still has its own constant).

    Returns
    -------
    (N, 3) float64 array, pixels
        FWHM along the major axis, the minor axis, and their geometric mean; NaN where a fit fails.
    """
    image = _as_image2d(image2d)
    window = _integer("window", window, low=3, odd=True)
    pos, _ = _positions(beads_or_positions)
    if background is not None:
        image = image - np.broadcast_to(np.asarray(background, float), image.shape)
    out, half = np.full((len(pos), 3), np.nan), window // 2
    for i, (y, x) in enumerate(pos):
        if not (np.isfinite(y) and np.isfinite(x)):
            continue
        ry, rx = round(y), round(x)
        patch = image[max(0, ry - half) : max(0, ry + half + 1), max(0, rx - half) : max(0, rx + half + 1)]
        if min(patch.shape) >= 5:
            fwhm = _fit_gaussian(patch)
            out[i] = np.nan if fwhm is None else fwhm
    return out


def estimate_psf_sigma(image2d, *, background=None, saturation: float | None = None, n_peaks: int = 10) -> float:
    """PSF Gaussian sigma (pixels) from the brightest isolated peaks of an image of beads.

    Starting from 1.5 px, repeat up to five times: matched-filter with the current sigma, take the ``n_peaks``
    brightest local maxima above 6 noise sigmas and 5 % of the brightest whose window (as
    :class:`~calibration.detect.DetectConfig` would choose it) stays inside the image and holds no saturated pixel,
    with no other such peak within ``0.75 * window``; fit elliptical Gaussians (:func:`bead_fwhm`) and take the
    median geometric-mean sigma; stop when it changes by less than 2 %.

    Parameters
    ----------
    image2d : (Y, X) array, image units
    background : None or (Y, X) array, image units
        None: :func:`estimate_background` with ``size = max(64, min(Y, X) // 4)``.
    saturation : float or None, image units
        Peaks with a pixel at or above this value are not used.
    n_peaks : int

    Returns
    -------
    float, pixels, within ``[0.5, min(Y, X) / 16]``
    """
    image = _as_image2d(image2d)
    if background is None:
        background = estimate_background(image, size=max(64, min(image.shape) // 4))
    resid = image - np.broadcast_to(np.asarray(background, float), image.shape)
    sigma, top = 1.5, max(0.5, min(image.shape) / 16)
    for _ in range(5):
        window = _default_window(sigma)
        filtered = ndimage.gaussian_filter(resid, sigma)
        level = max(6.0 * estimate_noise(filtered), 0.05 * float(filtered.max()))
        peaks = _find_peaks(filtered, level, max(1, round(sigma)))
        cut, sat = _border_and_saturation(peaks.astype(float), image[None], window, saturation)
        usable = peaks[~cut & (sat == 0) & (_neighbours(peaks.astype(float))[0] >= 0.75 * window)][:n_peaks]
        fwhm = bead_fwhm(resid, usable, window=window)[:, 2]
        fwhm = fwhm[np.isfinite(fwhm)]
        if fwhm.size == 0:
            raise ValueError(
                f"image2d: no isolated, unsaturated bead with a {window}-pixel window to estimate the PSF sigma "
                f"from ({len(peaks)} peaks above 6 sigma); give the sigma in pixels (sigma_px)"
            )
        new = min(max(float(np.median(fwhm)) / FWHM_PER_SIGMA, 0.5), top)
        converged, sigma = abs(new - sigma) <= 0.02 * sigma, new
        if converged:
            break
    return sigma


def extract_crops(stack, beads, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crops around beads, all planes, background not subtracted.

    Parameters
    ----------
    stack : (Y, X) image or (Z, Y, X) stack, image units
    beads : list of Bead or (N, 2) array of (y, x), pixels
    window : odd int, pixels

    Returns
    -------
    crops : (N, Z, window, window) float64, image units (Z = 1 for a 2D image), centred on (round(y), round(x))
    origins : (N, 2) int, (row, col) of each crop's first pixel in the image

    Raises
    ------
    ValueError
        When a bead's window leaves the image (:func:`~calibration.detect.detect_beads` rejects those as "cut by the
        border").
    """
    data, _ = _as_stack(stack)
    window = _integer("window", window, low=1, odd=True)
    pos, labels = _positions(beads)
    half, (n_z, n_y, n_x) = window // 2, data.shape
    if not np.all(np.isfinite(pos)):
        raise ValueError("beads: expected finite (y, x) positions, got NaN or infinity")
    origins = np.rint(pos).astype(int) - half
    outside = np.flatnonzero(np.any((origins < 0) | (origins + window > np.array([n_y, n_x])), axis=1))
    if outside.size:
        (y, x), label = pos[outside[0]], labels[outside[0]]
        raise ValueError(
            f"beads: the {window}-pixel window of bead {label} at (y, x) = ({y:.1f}, {x:.1f}) leaves the "
            f"{n_y}x{n_x} image (cut by the border)"
        )
    crops = np.zeros((len(pos), n_z, window, window))
    for i, (oy, ox) in enumerate(origins):
        crops[i] = data[:, oy : oy + window, ox : ox + window]
    return crops, origins
