"""Bead detection and PSF extraction from measured images of sub-resolution fluorescent beads.

Conventions
-----------
Images are ``(Y, X)`` arrays and z-stacks ``(Z, Y, X)`` arrays (rows ``y``, columns ``x``, plane index ``z``).
Positions are in pixels with a pixel's centre at integer coordinates; ``z`` is in plane-index units. Values stay
in the image's own units (counts, ADU); all arithmetic is float64.

Algorithm (:func:`detect_beads`)
--------------------------------
1. Background: sigma-clipped medians of square tiles (side ``size // 4``), a 3 x 3 median filter over the tiles
   and a cubic spline back to the pixel grid (:func:`estimate_background`, ``size = 4 * window``). For a stack the
   map comes from the per-pixel median over z, so a bead that is bright in a few planes does not lift it; the
   camera's fixed pattern (with 5 planes or more: that median less its 3 x 3 median filter, i.e. hot pixels; a
   bead should be in focus in fewer than half the planes) and a per-plane offset (the median of each plane less
   the median over z: a brighter first frame, bleaching) are removed as well.
2. Noise: robust sigma (MAD-based, outliers clipped) of the residual ``image - background`` over all planes
   (:func:`estimate_noise`), at least the rounding noise ``1 / sqrt(12)`` of an integer image.
3. Matched filter: each residual plane is smoothed with a Gaussian of ``sigma_px`` (estimated with
   :func:`estimate_psf_sigma` from the brightest isolated peaks of the image, or of the maximum projection of the
   residual of a stack, when not given). The detection image is the filtered plane in units of its noise sigma,
   measured robustly on the filtered residual; for a stack, the maximum over z of the filtered planes, each in
   units of its own noise sigma (at least that of the whole stack), less that projection's own background.
4. Candidates: local maxima of the detection image above ``threshold``
   (:func:`skimage.feature.peak_local_max`, ``min_distance = max(1, round(sigma_px))``), border included.
5. Focus (stacks): the vertex of the parabola through the maximum of the candidate's matched-filtered residual
   along z and its two neighbours (sub-plane).
6. Position: iterated Gaussian-weighted centroid (weight sigma ``sigma_px``, i.e. effectively within about
   ``2 * sigma_px``) of the residual plane of best focus, over-relaxed by 2, which is exact for a Gaussian spot of
   width ``sigma_px`` at any sub-pixel position. The bead's ``peak`` is the residual at the rounded position, its
   ``snr`` that peak over the (unsmoothed) noise sigma.
7. Every candidate is reported. Beads are indexed by decreasing peak; one reason is given per rejected bead, in
   this order of precedence: cut by the border (the ``window`` crop leaves the image), saturated (a pixel within
   ``window // 2`` of the bead reaches ``saturation``, in any plane), too close (the nearest other candidate,
   kept or not, is nearer than ``min_separation``), too faint (``snr < min_snr``), over ``max_beads`` (the
   faintest of the rest).

Nothing is random: the same image and settings give the same beads.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, ndimage, optimize, spatial
from skimage.feature import peak_local_max

from optisim._keys import reject_unknown_keys

__all__ = [
    "FWHM_PER_SIGMA",
    "Bead",
    "DetectConfig",
    "Detection",
    "bead_fwhm",
    "beads_table",
    "check_detection",
    "detect_beads",
    "estimate_background",
    "estimate_noise",
    "estimate_psf_sigma",
    "extract_crops",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548: FWHM of a Gaussian in units of its sigma
REASONS = ("cut by the border", "saturated", "too close", "too faint", "over --max-beads", "poor fit")
_MAD_TO_SIGMA = 1.482602218505602  # sigma of a normal distribution per median absolute deviation


def _real(name: str, value, *, low: float = 0.0, strict: bool = True, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        what = f"{'None or ' if optional else ''}a finite number {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


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


@dataclass(frozen=True)
class DetectConfig:
    """Settings of :func:`detect_beads` (pixels and image units).

    Attributes
    ----------
    sigma_px : float or None, pixels
        Expected PSF Gaussian sigma (matched filter); None: :func:`estimate_psf_sigma`.
    threshold : float
        Detection threshold: peak of the matched-filtered, background-subtracted image in units of its noise sigma.
    window : odd int >= 5 or None, pixels
        Crop side; None: the odd integer >= ``8 * sigma_px``, at least 15.
    min_separation : float or None, pixels
        A bead whose nearest other candidate is nearer than this is rejected; None: ``0.75 * window``.
    min_snr : float
        Beads with ``peak / noise sigma`` (unsmoothed) below this are rejected as too faint.
    saturation : float or None, image units
        Value at which the detector saturates (255 for uint8); None: no saturation check.
    max_beads : int or None
        Keep at most this many accepted beads (brightest first); None: no limit.
    """

    sigma_px: float | None = None
    threshold: float = 6.0
    window: int | None = None
    min_separation: float | None = None
    min_snr: float = 10.0
    saturation: float | None = None
    max_beads: int | None = None

    def __post_init__(self):
        checked = {
            "sigma_px": _real("sigma_px", self.sigma_px, optional=True),
            "threshold": _real("threshold", self.threshold),
            "window": _integer("window", self.window, low=5, odd=True, optional=True),
            "min_separation": _real("min_separation", self.min_separation, strict=False, optional=True),
            "min_snr": _real("min_snr", self.min_snr, strict=False),
            "saturation": _real("saturation", self.saturation, optional=True),
            "max_beads": _integer("max_beads", self.max_beads, low=1, optional=True),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """Plain dictionary of the fields (what :meth:`from_dict` reads)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DetectConfig:
        """Build from a dictionary; unknown keys are errors that name the key and the nearest valid one."""
        reject_unknown_keys(d, [f.name for f in dataclasses.fields(cls)], "bead detection settings")
        return cls(**d)


@dataclass(frozen=True)
class Bead:
    """One detection candidate, kept or rejected (positions in pixels, values in image units).

    ``index`` orders the candidates of one image by decreasing ``peak``; ``frame`` is the image's place in a list;
    ``z`` is the sub-plane of best focus of a stack (None for a 2D image); ``reason`` is ``""`` for a kept bead.
    """

    index: int
    frame: int
    y: float
    x: float
    z: float | None
    peak: float
    snr: float
    background: float
    status: str
    reason: str

    @property
    def category(self) -> str:
        """``"kept"`` or the reason's category, one of ``REASONS``."""
        return "kept" if not self.reason else next((r for r in REASONS if self.reason.startswith(r)), self.reason)

    def to_dict(self) -> dict:
        """Plain dictionary of the fields (a row of :func:`beads_table`)."""
        return dataclasses.asdict(self)


@dataclass
class Detection:
    """Result of :func:`detect_beads`: every candidate and the quantities they were judged by.

    ``background`` is the ``(Y, X)`` float32 background map and ``noise_sigma`` the robust noise sigma, both in image
    units; ``max_peak_sigma`` is the brightest value of the detection image in units of its noise sigma.
    """

    beads: list[Bead]
    background: np.ndarray
    noise_sigma: float
    sigma_px: float
    window: int
    threshold: float
    max_peak_sigma: float = 0.0
    config: DetectConfig = field(default_factory=DetectConfig)

    @property
    def kept(self) -> list[Bead]:
        return [b for b in self.beads if b.status == "kept"]

    @property
    def rejected(self) -> list[Bead]:
        return [b for b in self.beads if b.status != "kept"]

    def summary(self) -> str:
        """One line, e.g. ``"52 candidates: 47 kept, 3 too close, 1 saturated, 1 cut by the border"``."""
        counts = {name: 0 for name in ("kept", *REASONS)}
        for bead in self.beads:
            counts[bead.category] = counts.get(bead.category, 0) + 1
        parts = [f"{counts.pop('kept')} kept"] + [f"{n} {name}" for name, n in counts.items() if n]
        n = len(self.beads)
        return f"{n} candidate{'' if n == 1 else 's'}: " + ", ".join(parts)


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
        Objects much smaller than ``size`` (``4 * window`` in :func:`detect_beads`) do not enter the map.

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
    brightest local maxima above 6 noise sigmas and 5 % of the brightest whose window (as :class:`DetectConfig`
    would choose it) stays inside the image and holds no saturated pixel, with no other such peak within
    ``0.75 * window``; fit elliptical Gaussians (:func:`bead_fwhm`) and take the median geometric-mean sigma; stop
    when it changes by less than 2 %.

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


def _refine(resid: np.ndarray, y: int, x: int, sigma: float) -> tuple[float, float]:
    """Iterated Gaussian-weighted centroid of the residual plane near (y, x), over-relaxed by 2; pixels.

    For a Gaussian spot of width ``sigma`` one step lands on its centre; for other widths the over-relaxed step
    still converges to the same fixed point (the weighted centroid equals the weight's centre). A result more than
    ``max(1.5, sigma)`` px from the start (a failed refinement) falls back to the start.
    """
    r = max(2, math.ceil(3.0 * sigma))
    cy, cx = float(y), float(x)
    for _ in range(30):
        iy, ix = round(cy), round(cx)
        sy = slice(max(0, iy - r), min(resid.shape[0], iy + r + 1))
        sx = slice(max(0, ix - r), min(resid.shape[1], ix + r + 1))
        yy, xx = np.ogrid[sy, sx]
        w = resid[sy, sx] * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))
        total = w.sum()
        if not total > 0:
            break
        step_y, step_x = 2.0 * ((w * yy).sum() / total - cy), 2.0 * ((w * xx).sum() / total - cx)
        cy, cx = cy + step_y, cx + step_x
        if math.hypot(step_y, step_x) < 1e-5 or math.hypot(cy - y, cx - x) > max(1.5, sigma) + 2.0:
            break
    if not math.hypot(cy - y, cx - x) <= max(1.5, sigma):
        return float(y), float(x)
    return cy, cx


def _focus(data, reference, offsets, y: int, x: int, sigma: float) -> float:
    """Sub-plane of the maximum of the matched-filtered residual at (y, x) along z (parabolic vertex)."""
    r = math.ceil(4.0 * sigma)
    sy = slice(max(0, y - r), min(data.shape[1], y + r + 1))
    sx = slice(max(0, x - r), min(data.shape[2], x + r + 1))
    yy, xx = np.ogrid[sy, sx]
    kernel = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2.0 * sigma**2))
    profile = np.tensordot(data[:, sy, sx] - reference[sy, sx], kernel, axes=([1, 2], [0, 1]))
    profile -= offsets * kernel.sum()
    k = int(np.argmax(profile))
    if 0 < k < len(profile) - 1:
        a, b, c = profile[k - 1 : k + 2]
        if a - 2.0 * b + c < 0:
            return k + float(np.clip(0.5 * (a - c) / (a - 2.0 * b + c), -0.5, 0.5))
    return float(k)


def _detection_image(data, reference, offsets, sigma, size, quantum) -> tuple[np.ndarray, float]:
    """Matched-filtered residual in units of its noise sigma, and the noise sigma of the unfiltered residual.

    For a stack each filtered plane is divided by its own noise sigma (at least the whole stack's, so that a
    noisy plane does not dominate and a nearly empty one is not blown up), and the maximum over z less its own
    background (the maximum of noisy planes sits above zero) is returned. ``quantum`` is the detector's counting
    step (1 for integer images); the filter's L2 norm ``1 / (2 sqrt(pi) sigma)`` scales it for the filtered noise.
    """
    step = max(1, data.size // 2**18)  # a deterministic subsample of each plane for the noise
    raw, filt, plane_noise = [], [], []
    for plane, offset in zip(data, offsets, strict=True):
        resid = plane - reference - offset
        filtered = ndimage.gaussian_filter(resid, sigma)
        raw.append(resid.ravel()[::step])
        filt.append(filtered.ravel()[::step])
        plane_noise.append(estimate_noise(filtered) if len(data) > 1 else 0.0)
    noise = estimate_noise(np.concatenate(raw), quantum=quantum)
    noise_f = estimate_noise(np.concatenate(filt), quantum=quantum / (2.0 * math.sqrt(math.pi) * sigma))
    if len(data) == 1:
        return filtered / noise_f, noise
    proj = None
    for plane, offset, sigma_f in zip(data, offsets, plane_noise, strict=True):
        scaled = ndimage.gaussian_filter(plane - reference - offset, sigma) / max(sigma_f, noise_f)
        proj = scaled if proj is None else np.maximum(proj, scaled)
    return proj - estimate_background(proj, size=size), noise


def _measure(data, reference, offsets, background, peaks, sigma, noise, is_stack) -> list[tuple]:
    """(y, x, z, peak, snr, background) of each candidate, brightest peak first."""
    planes, rows = {}, []
    for py, px in peaks:
        z = _focus(data, reference, offsets, py, px, sigma) if is_stack else None
        p = 0 if z is None else min(max(round(z), 0), len(data) - 1)
        if p not in planes:
            planes[p] = data[p] - reference - offsets[p]
        y, x = _refine(planes[p], py, px, sigma)
        ry, rx = min(max(round(y), 0), data.shape[1] - 1), min(max(round(x), 0), data.shape[2] - 1)
        peak = float(planes[p][ry, rx])
        rows.append((float(y), float(x), z, peak, peak / noise, float(background[ry, rx] + offsets[p])))
    return sorted(rows, key=lambda row: -row[3])


def _reasons(pos, snr, data, config: DetectConfig, window: int) -> list[str]:
    """One rejection reason per bead (``""``: kept), beads in index order, in the documented precedence."""
    cut, saturated = _border_and_saturation(pos, data, window, config.saturation)
    dist, near = _neighbours(pos)
    min_sep = 0.75 * window if config.min_separation is None else config.min_separation
    reasons = []
    for i in range(len(pos)):
        if cut[i]:
            reasons.append("cut by the border")
        elif saturated[i]:
            reasons.append(f"saturated ({saturated[i]} pixels at {config.saturation:g})")
        elif dist[i] < min_sep:
            reasons.append(f"too close to bead {near[i]} ({dist[i]:.1f} px < {min_sep:.1f} px)")
        elif snr[i] < config.min_snr:
            reasons.append(f"too faint (SNR {snr[i]:.1f} < {config.min_snr:g})")
        else:
            over = config.max_beads is not None and reasons.count("") >= config.max_beads
            reasons.append("over --max-beads" if over else "")
    return reasons


def detect_beads(stack, config: DetectConfig = DetectConfig(), *, frame: int = 0) -> Detection:
    """Find beads in an image or z-stack and judge each candidate (algorithm in the module docstring).

    Parameters
    ----------
    stack : (Y, X) image or (Z, Y, X) stack, image units
    config : DetectConfig
    frame : int
        Index of this image in the caller's list, stored in each :class:`Bead`.

    Returns
    -------
    Detection
        Every candidate, kept or rejected with a reason, indexed by decreasing peak. Never raises for a bad bead;
        :func:`check_detection` turns "nothing usable" into an error.
    """
    data, is_stack = _as_stack(stack)
    if not isinstance(config, DetectConfig):
        raise TypeError(f"config: expected a DetectConfig, got {type(config).__name__}")
    frame = _integer("frame", frame, low=0)
    if is_stack:  # camera fixed pattern (hot pixels) from the median over z, and per-plane offsets
        median = np.median(data, axis=0)
        smooth = ndimage.median_filter(median, size=3)
        pattern = median - smooth if len(data) >= 5 else 0.0  # a bead in focus in most planes would be "pattern"
        offsets = np.array([np.median(plane - median) for plane in data])
        image = np.full(median.shape, -np.inf)  # maximum projection of the residual planes, for the sigma
        for plane, offset in zip(data, offsets, strict=True):
            np.maximum(image, plane - pattern - offset, out=image)
        smooth = smooth if len(data) >= 5 else median
    else:
        image, smooth, pattern, offsets = data[0], data[0], 0.0, np.zeros(1)
    sigma = config.sigma_px or estimate_psf_sigma(image, saturation=None if is_stack else config.saturation)
    window = config.window or _default_window(sigma)
    background = estimate_background(smooth, size=4 * window)
    reference = background + pattern
    quantum = 1.0 if np.issubdtype(np.asarray(stack).dtype, np.integer) else 0.0
    det, noise = _detection_image(data, reference, offsets, sigma, 4 * window, quantum)
    peaks = _find_peaks(det, config.threshold, max(1, round(sigma)))
    rows = _measure(data, reference, offsets, background, peaks, sigma, noise, is_stack)
    pos = np.array([row[:2] for row in rows], float).reshape(-1, 2)
    reasons = _reasons(pos, [row[4] for row in rows], data, config, window)
    beads = [
        Bead(i, frame, y, x, z, peak, snr, bg, "rejected" if reason else "kept", reason)
        for i, ((y, x, z, peak, snr, bg), reason) in enumerate(zip(rows, reasons, strict=True))
    ]
    map32 = background.astype(np.float32)
    return Detection(beads, map32, noise, float(sigma), int(window), config.threshold, float(det.max()), config)


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
        When a bead's window leaves the image (:func:`detect_beads` rejects those as "cut by the border").
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


def check_detection(detection: Detection, *, threshold_option: str = "--threshold") -> None:
    """Raise a one-line ValueError when a detection has no usable bead, saying what to change.

    ``threshold_option`` is how the caller names the threshold setting (the CLI option by default).
    """
    beads = detection.beads
    if not beads:
        raise ValueError(
            f"no beads found above {detection.threshold:g} sigma (the brightest peak is "
            f"{detection.max_peak_sigma:.1f} sigma); lower {threshold_option} or check the image"
        )
    if detection.kept:
        return
    if all(b.category == "saturated" for b in beads):
        raise ValueError(
            f"all {len(beads)} beads are saturated (at {detection.config.saturation:g}); "
            "reduce the exposure or the laser power"
        )
    raise ValueError(f"no usable beads: {detection.summary()}")


def beads_table(beads) -> list[dict]:
    """Rows (one dict per bead, the :class:`Bead` fields) for JSON or CSV."""
    return [bead.to_dict() for bead in beads]
