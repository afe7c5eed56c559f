"""Bead detection in measured images of sub-resolution fluorescent beads.

Conventions
-----------
Images are ``(Y, X)`` arrays and z-stacks ``(Z, Y, X)`` arrays (rows ``y``, columns ``x``, plane index ``z``).
Positions are in pixels with a pixel's centre at integer coordinates; ``z`` is in plane-index units. Values stay
in the image's own units (counts, ADU); all arithmetic is float64. The measurements the detection builds on
(background, noise, PSF width) and the crops around the beads are in :mod:`calibration.measure`.

Algorithm (:func:`detect_beads`)
--------------------------------
1. Background: sigma-clipped medians of square tiles (side ``size // 4``), a 3 x 3 median filter over the tiles
   and a cubic spline back to the pixel grid (:func:`~calibration.measure.estimate_background`,
   ``size = 4 * window``). For a stack the map comes from the per-pixel median over z, so a bead that is bright in a
   few planes does not lift it; the camera's fixed pattern (with 5 planes or more: that median less its 3 x 3
   median filter, i.e. hot pixels; a bead should be in focus in fewer than half the planes) and a per-plane offset
   (the median of each plane less the median over z: a brighter first frame, bleaching) are removed as well.
2. Noise: robust sigma (MAD-based, outliers clipped) of the residual ``image - background`` over all planes
   (:func:`~calibration.measure.estimate_noise`), at least the rounding noise ``1 / sqrt(12)`` of an integer image.
3. Matched filter: each residual plane is smoothed with a Gaussian of ``sigma_px`` (estimated with
   :func:`~calibration.measure.estimate_psf_sigma` from the brightest isolated peaks of the image, or of the maximum
   projection of the residual of a stack, when not given). The detection image is the filtered plane in units of its
   noise sigma, measured robustly on the filtered residual; for a stack, the maximum over z of the filtered planes,
   each in units of its own noise sigma (at least that of the whole stack), less that projection's own background.
4. Candidates: local maxima of the detection image above ``threshold``
   (:func:`skimage.feature.peak_local_max`, ``min_distance = max(1, round(sigma_px))``), border included. An
   aberrated bead (a defocus ring) has several local maxima: maxima closer than the ``min_separation`` (below)
   whose straight connection never drops below half the lower one are joined, transitively, so the maxima around a
   ring join through their neighbours; three or more joined maxima are one bead (two are judged as two: a close pair
   of beads looks the same), if their region (the connected pixels at least half the lowest maximum) is nearly
   point-symmetric about its centroid (``MIN_SYMMETRY``; a cluster of beads is not). Such a bead sits at the
   centroid of the detection image over that region, and its ``peak`` is its highest maximum.
5. Focus (stacks): the vertex of the parabola through the maximum of the candidate's matched-filtered residual
   along z and its two neighbours (sub-plane).
6. Position (single-maximum beads): iterated Gaussian-weighted centroid (weight sigma ``sigma_px``, i.e.
   effectively within about ``2 * sigma_px``) of the residual plane of best focus, over-relaxed by 2, which is exact
   for a Gaussian spot of width ``sigma_px`` at any sub-pixel position. The bead's ``peak`` is the residual at the
   rounded position, its ``snr`` that peak over the (unsmoothed) noise sigma.
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
from scipy import ndimage

from calibration.measure import (
    _as_stack,
    _border_and_saturation,
    _default_window,
    _find_peaks,
    _integer,
    _neighbours,
    estimate_background,
    estimate_noise,
    estimate_psf_sigma,
)
from optisim._keys import reject_unknown_keys

__all__ = ["Bead", "DetectConfig", "Detection", "beads_table", "check_detection", "detect_beads"]

JOIN_LEVEL = 0.5  # maxima joined by a ridge above this fraction of the lower one are one bead. The maxima around
# a 1-wave-RMS defocus ring need 0.5 (0.6 and 0.7 split 6 and 10 of 40 such beads). Two equal spots join when they
# are closer than 3.3 sigma of the filtered image (about lambda / NA): too close to fit apart in any case.
MIN_SYMMETRY = 0.7  # joined maxima are one bead only if their region is this point-symmetric (a ring, not a cluster)
REASONS = ("cut by the border", "saturated", "too close", "too faint", "over --max-beads", "poor fit")


def _real(name: str, value, *, low: float = 0.0, strict: bool = True, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        what = f"{'None or ' if optional else ''}a finite number {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DetectConfig:
    """Settings of :func:`detect_beads` (pixels and image units).

    Attributes
    ----------
    sigma_px : float or None, pixels
        Expected PSF Gaussian sigma (matched filter); None: :func:`~calibration.measure.estimate_psf_sigma`.
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


def _join_maxima(det: np.ndarray, peaks: np.ndarray, *, reach: float) -> list[tuple]:
    """Candidates ``(y, x, maxima (M, 2) int)`` from the local maxima ``peaks`` (N, 2) of the detection image: one
    per group of maxima joined by a ridge (step 4 of the module docstring); ``y, x`` the centroid of a group of more
    than one maximum, else the maximum itself."""
    from scipy.spatial import cKDTree

    n = len(peaks)
    values = det[peaks[:, 0], peaks[:, 1]] if n else np.zeros(0)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in sorted(cKDTree(peaks).query_pairs(reach)) if n > 1 and reach > 0 else []:
        steps = int(np.ceil(np.hypot(*(peaks[i] - peaks[j])))) + 1
        line = peaks[i][:, None] + np.linspace(0.0, 1.0, steps + 1)[None] * (peaks[j] - peaks[i])[:, None]
        if ndimage.map_coordinates(det, line, order=1).min() >= JOIN_LEVEL * min(values[i], values[j]):
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):  # peaks are brightest first, so each group's first member is its brightest maximum
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) == 2:  # two maxima with a shallow dip: a close pair as likely as one bead; judged apart
            out.extend((float(y), float(x), peaks[[i]]) for i in members for y, x in [peaks[i]])
            continue
        maxima = peaks[members]
        if len(members) == 1:
            out.append((float(maxima[0, 0]), float(maxima[0, 1]), maxima))
            continue
        y, x, symmetry = _region_centroid(det, maxima, JOIN_LEVEL * values[members].min())
        if symmetry >= MIN_SYMMETRY:
            out.append((y, x, maxima))
        else:  # not one bead's image (a cluster of beads): judged apart
            out.extend((float(py), float(px), peaks[[i]]) for i, (py, px) in zip(members, maxima, strict=True))
    return out


def _region_centroid(det: np.ndarray, maxima: np.ndarray, level: float) -> tuple[float, float, float]:
    """Centroid ``(y, x)`` of ``det`` over the connected pixels ``>= level`` that hold the ``maxima`` (M, 2), and the
    region's point symmetry about it: ``sum(v * v_rotated) / sum(v**2)`` with ``v`` the detection image on the
    region (0 elsewhere) and ``v_rotated`` its rotation by 180 degrees about the centroid (1: symmetric)."""
    labels, _ = ndimage.label(det >= level)
    region = np.isin(labels, np.unique(labels[maxima[:, 0], maxima[:, 1]]))
    yy, xx = np.nonzero(region)
    w = det[yy, xx]
    cy, cx = float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())
    masked = np.where(region, det, 0.0)
    rotated = ndimage.map_coordinates(masked, [2 * cy - yy, 2 * cx - xx], order=1, cval=0.0)
    return cy, cx, float((w * rotated).sum() / (w**2).sum())


def _measure(data, reference, offsets, background, candidates, sigma, noise, is_stack) -> list[tuple]:
    """(y, x, z, peak, snr, background) of each candidate (:func:`_join_maxima`), brightest peak first."""
    planes, rows = {}, []
    for cy, cx, maxima in candidates:
        py, px = (int(v) for v in maxima[0]) if len(maxima) == 1 else (round(cy), round(cx))
        z = _focus(data, reference, offsets, py, px, sigma) if is_stack else None
        p = 0 if z is None else min(max(round(z), 0), len(data) - 1)
        if p not in planes:
            planes[p] = data[p] - reference - offsets[p]
        y, x = _refine(planes[p], py, px, sigma) if len(maxima) == 1 else (cy, cx)
        ry, rx = min(max(round(y), 0), data.shape[1] - 1), min(max(round(x), 0), data.shape[2] - 1)
        peak = float(planes[p][ry, rx]) if len(maxima) == 1 else float(planes[p][maxima[:, 0], maxima[:, 1]].max())
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
    reach = 0.75 * window if config.min_separation is None else config.min_separation
    candidates = _join_maxima(det, peaks, reach=reach)
    rows = _measure(data, reference, offsets, background, candidates, sigma, noise, is_stack)
    pos = np.array([row[:2] for row in rows], float).reshape(-1, 2)
    reasons = _reasons(pos, [row[4] for row in rows], data, config, window)
    beads = [
        Bead(i, frame, y, x, z, peak, snr, bg, "rejected" if reason else "kept", reason)
        for i, ((y, x, z, peak, snr, bg), reason) in enumerate(zip(rows, reasons, strict=True))
    ]
    map32 = background.astype(np.float32)
    return Detection(beads, map32, noise, float(sigma), int(window), config.threshold, float(det.max()), config)


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
